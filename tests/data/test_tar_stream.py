import io
import tarfile

import pytest

from ett_lightning.data.streaming.tar_stream import TarStreamError, expand_tar_streams, iter_tar_members, parse_number

MEMBERS = {
    "000000.png": b"\x89PNG" + bytes(range(256)) * 3,
    "000000.txt": b"a caption",
    "nested/dir/000001.json": b"{}",
    "x" * 150 + ".txt": b"long name",
    "caf\u00e9-\u5b57.txt": b"non-ascii name",
    "empty.txt": b"",
}


def tar_bytes(members: dict[str, bytes], fmt: int, directory: str | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=fmt) as tar:
        if directory:
            info = tarfile.TarInfo(directory)
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT])
def test_reads_what_tarfile_writes_long_and_unicode_names_included(fmt):
    data = tar_bytes(MEMBERS, fmt, directory="nested")
    assert list(iter_tar_members(io.BytesIO(data))) == list(MEMBERS.items())


def test_ustar_prefix_field_joins_the_name():
    name = "p" * 120 + "/file.txt"
    data = tar_bytes({name: b"1"}, tarfile.USTAR_FORMAT)
    assert list(iter_tar_members(io.BytesIO(data))) == [(name, b"1")]


def test_numbers_octal_and_base_256():
    assert parse_number(b"0000644\0") == 0o644
    assert parse_number(b"   17 \0\0") == 0o17
    assert parse_number(bytes([0x80]) + (2**40).to_bytes(11, "big")) == 2**40
    with pytest.raises(TarStreamError, match="malformed"):
        parse_number(b"12x4\0\0\0\0")


def test_corrupt_header_is_a_checksum_error_not_garbage():
    data = bytearray(tar_bytes(MEMBERS, tarfile.GNU_FORMAT))
    data[10] ^= 0xFF
    with pytest.raises(TarStreamError, match="checksum"):
        list(iter_tar_members(io.BytesIO(bytes(data))))


def test_truncated_member_raises_after_the_complete_ones():
    data = tar_bytes(MEMBERS, tarfile.GNU_FORMAT)
    members = iter_tar_members(io.BytesIO(data[:1024 + 200]))
    with pytest.raises(TarStreamError, match="truncated"):
        next(members)


def test_expander_marks_shard_ends_skips_meta_and_reports_a_broken_shard():
    good = tar_bytes({"__meta__/info.json": b"{}", "a.txt": b"1"}, tarfile.GNU_FORMAT)
    broken = tar_bytes({"b.txt": b"2" * 600}, tarfile.GNU_FORMAT)[:800]
    errors = []
    sources = [{"url": "good.tar", "stream": io.BytesIO(good)}, {"url": "broken.tar", "stream": io.BytesIO(broken)},
               {"url": "again.tar", "stream": io.BytesIO(good)}]
    records = list(expand_tar_streams(sources, handler=lambda exn: errors.append(exn) or True))
    assert records == [{"fname": "a.txt", "data": b"1", "__url__": "good.tar"}, {}, {},
                       {"fname": "a.txt", "data": b"1", "__url__": "again.tar"}, {}]
    assert len(errors) == 1 and "broken.tar" in errors[0].args
    with pytest.raises(TarStreamError):
        list(expand_tar_streams([{"url": "broken.tar", "stream": io.BytesIO(broken)}], handler=lambda exn: False))


def test_signed_checksums_of_old_writers_are_accepted():
    header = bytearray(tar_bytes({"\u00e9.txt": b"1"}, tarfile.GNU_FORMAT)[:512])
    assert any(b > 127 for b in header)
    signed = sum(b - 256 if b > 127 else b for b in header[:148] + b" " * 8 + header[156:])
    header[148:156] = f"{signed:06o}\0 ".encode()
    data = bytes(header) + b"1" + bytes(511) + bytes(1024)
    assert list(iter_tar_members(io.BytesIO(data))) == [("\u00e9.txt", b"1")]
