"""Streaming tar reading for the data pipeline, without :mod:`tarfile`'s per-member Python overhead.

``tarfile`` spends tens of microseconds of Python on every member header (pax parsing, object construction), and a
shard sample has two or three members: on small images header parsing was a large share of the whole pipeline's
time (docs/data.md, Throughput). This reader parses only what webdataset shards use: ustar/pax/GNU regular files,
pax ``path`` and GNU long names, octal and base-256 sizes, and it checks each header's checksum so corruption is an
error, not garbage data. Everything else (directories, links, devices) is skipped. A corrupt size field cannot make
it allocate more than the shard holds, nor more than :data:`MAX_MEMBER_BYTES`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any

import webdataset as wds

BLOCK = 512
REGULAR_FILE_TYPES = (b"0", b"\0", b"7")
WEBDATASET_META = re.compile(r"__[^/]*__($|/)")
MAX_MEMBER_BYTES = 1 << 28
"""No member of an image-text sample is this large (256 MiB); a size field beyond it is corruption."""
READ_CHUNK = 1 << 20


class TarStreamError(ValueError):
    """A tar stream that cannot be read on: bad header checksum, malformed number, or truncated data."""


def read_exactly(stream: IO[bytes], size: int, what: str) -> bytes:
    """``size`` bytes, read in chunks so that a size field larger than the rest of the stream allocates only what
    the stream holds (a buffered file's ``read(n)`` reserves ``n`` bytes first)."""
    if size <= READ_CHUNK:
        data = stream.read(size)
    else:
        parts, remaining = [], size
        while remaining and (part := stream.read(min(READ_CHUNK, remaining))):
            parts.append(part)
            remaining -= len(part)
        data = b"".join(parts)
    if len(data) != size:
        raise TarStreamError(f"truncated tar stream: {what} needs {size} bytes, got {len(data)}")
    return data


def parse_number(field: bytes) -> int:
    """A numeric header field: NUL/space padded octal, or GNU base-256 when the high bit is set."""
    if field[0] & 0x80:
        return int.from_bytes(bytes([field[0] & 0x7F]) + field[1:], "big")
    digits = field.split(b"\0", 1)[0].strip()
    try:
        return int(digits, 8) if digits else 0
    except ValueError as err:
        raise TarStreamError(f"malformed tar header number {field!r}") from err


def check_checksum(header: bytes) -> None:
    """The stored checksum must equal the header's byte sum with the checksum field read as spaces (unsigned, or
    signed as some old writers computed it)."""
    stored = parse_number(header[148:156])
    unsigned = sum(header[:148]) + 8 * 32 + sum(header[156:])
    if stored == unsigned:
        return
    signed = unsigned - 256 * sum(1 for b in header[:148] + header[156:] if b > 127)
    if stored != signed:
        raise TarStreamError(f"tar header checksum mismatch (stored {stored}, computed {unsigned})")


def header_name(header: bytes) -> str:
    name = header[:100].split(b"\0", 1)[0]
    if header[257:262] == b"ustar":
        prefix = header[345:500].split(b"\0", 1)[0]
        if prefix:
            name = prefix + b"/" + name
    return name.decode("utf-8", errors="surrogateescape")


def pax_path(records: bytes) -> str | None:
    """The ``path`` record of a pax extended header (records are ``"<len> key=value\\n"``, ``len`` counting the
    whole record)."""
    path = None
    while records:
        length_field, space, rest = records.partition(b" ")
        length = int(length_field) if length_field.isdigit() else 0
        if not space or not len(length_field) + 1 < length <= len(records):
            raise TarStreamError(f"malformed pax header record {records[:40]!r}")
        key, _, value = rest[:length - len(length_field) - 1].partition(b"=")
        if key == b"path":
            path = value[:-1].decode("utf-8", errors="surrogateescape")
        records = records[length:]
    return path


def iter_tar_members(stream: IO[bytes]) -> Iterator[tuple[str, bytes]]:
    """(name, data) of each regular file in a tar stream, in order. Ends at the end-of-archive block or at a
    clean end of stream on a header boundary; raises :class:`TarStreamError` on anything else."""
    long_name, padding = None, 0
    while True:
        read_exactly(stream, padding, "member padding")
        header = stream.read(BLOCK)
        if not header or header == bytes(BLOCK):
            return
        if len(header) != BLOCK:
            raise TarStreamError(f"truncated tar stream: partial header of {len(header)} bytes")
        check_checksum(header)
        size, kind = parse_number(header[124:136]), header[156:157]
        if size > MAX_MEMBER_BYTES:
            raise TarStreamError(f"member {header_name(header)!r} claims {size} bytes, more than the "
                                 f"{MAX_MEMBER_BYTES} a shard member may hold: corrupt size field")
        data = read_exactly(stream, size, f"member {header_name(header)!r}")
        padding = -size % BLOCK
        if kind == b"x":
            long_name = pax_path(data) or long_name
        elif kind == b"L":
            long_name = data.split(b"\0", 1)[0].decode("utf-8", errors="surrogateescape")
        elif kind in REGULAR_FILE_TYPES:
            yield long_name or header_name(header), data
            long_name = None
        elif kind != b"g":
            long_name = None


def expand_tar_streams(
    sources: Iterable[dict[str, Any]], handler: Callable[[Exception], bool]
) -> Iterator[dict[str, Any]]:
    """webdataset stage: opened shards (``url``, ``stream``) -> file records (``fname``, ``data``, ``__url__``),
    with an empty record after each shard so that samples never straddle two shards. A shard that fails part
    way is handed to ``handler`` (which counts it) and reading goes on with the next shard."""
    for source in sources:
        try:
            for name, data in iter_tar_members(source["stream"]):
                if not WEBDATASET_META.match(name):
                    yield {"fname": name, "data": data, "__url__": source["url"]}
        except Exception as exn:
            exn.args = (*exn.args, source["url"])
            if not handler(exn):
                raise
        finally:
            source["stream"].close()
        yield {}


def tar_samples(urls: Iterable[dict[str, Any]], handler: Callable[[Exception], bool]) -> Iterator[dict[str, Any]]:
    """Shard URLs -> webdataset samples (``__key__``, ``__url__`` and one entry per file extension)."""
    streams = wds.tariterators.url_opener(urls, handler=handler)
    return wds.tariterators.group_by_keys(expand_tar_streams(streams, handler), handler=handler)


tar_to_samples = wds.pipelinefilter(tar_samples)
