"""Seeded fuzzing of the training shard reader: damaged shards never crash, hang or balloon memory, and a sample
that does not come out is counted."""

from __future__ import annotations

import io
import random
import tarfile
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest

from ett_lightning.data.sequences.sequence_builder import SequenceBuilder
from ett_lightning.data.skips import SkipCounter
from ett_lightning.data.streaming.decoding import SampleDecoder
from ett_lightning.data.streaming.tar_stream import BLOCK, tar_samples
from ett_lightning.data.streaming.transforms import ImageTransform
from tests.conftest import IMAGE_SIZE, tiny_module

LONG_DIRECTORY = "d" * 160  # member names beyond 100 bytes: pax records or GNU long-name members
MEMORY_LIMIT = 32 << 20


def rewritten_shard(shard: Path, fmt: int) -> bytes:
    """The shard's members under long names, written in ``fmt`` (pax or GNU), so name extensions are fuzzed too."""
    out = io.BytesIO()
    with tarfile.open(shard) as source, tarfile.open(fileobj=out, mode="w", format=fmt) as target:
        for member in source.getmembers():
            data = source.extractfile(member).read()
            info = tarfile.TarInfo(f"{LONG_DIRECTORY}/{member.name}")
            info.size = len(data)
            target.addfile(info, io.BytesIO(data))
    return out.getvalue()


def header_offsets(data: bytes) -> list[int]:
    offsets, offset = [], 0
    while offset + BLOCK <= len(data) and data[offset:offset + BLOCK] != bytes(BLOCK):
        offsets.append(offset)
        size = int(data[offset + 124:offset + 136].split(b"\0")[0].strip() or b"0", 8)
        offset += BLOCK + -(-size // BLOCK) * BLOCK
    return offsets


def with_checksum(header: bytearray) -> bytearray:
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)
    return header


def edit_header(data: bytes, rng: random.Random, edit: Callable[[bytearray, random.Random], None],
                checksum: bool = True) -> bytes:
    offset = rng.choice(header_offsets(data))
    header = bytearray(data[offset:offset + BLOCK])
    edit(header, rng)
    if checksum:
        with_checksum(header)
    return data[:offset] + bytes(header) + data[offset + BLOCK:]


def flipped_bytes(data: bytes, rng: random.Random) -> bytes:
    damaged = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        damaged[rng.randrange(len(damaged))] ^= 1 << rng.randrange(8)
    return bytes(damaged)


def truncated(data: bytes, rng: random.Random) -> bytes:
    return data[:rng.randrange(1, len(data))]


def bad_checksum(data: bytes, rng: random.Random) -> bytes:
    def edit(header, rng):
        header[148:156] = b"%06o\0 " % rng.randrange(8 ** 6)
    return edit_header(data, rng, edit, checksum=False)


def absurd_size(data: bytes, rng: random.Random) -> bytes:
    """Octal sizes of up to 8 GiB and base-256 sizes of up to 2**95 (negative ones included), checksum valid."""
    def edit(header, rng):
        if rng.random() < 0.5:
            header[124:136] = b"%011o\0" % rng.choice([8 ** 11 - 1, 1 << 30, rng.randrange(8 ** 11)])
        else:
            header[124:136] = bytes([rng.choice([0x80, 0xFF])]) + rng.randbytes(11)
    return edit_header(data, rng, edit)


def rewritten_fields(data: bytes, rng: random.Random) -> bytes:
    """Random bytes in the name, type or link fields, or in a pax record's length, under a valid checksum."""
    def edit(header, rng):
        field = rng.choice([(0, 100), (156, 157), (157, 257), (345, 500)])
        header[field[0]:field[1]] = rng.randbytes(field[1] - field[0])
    damaged = edit_header(data, rng, edit)
    if rng.random() < 0.5 and b" path=" in damaged:
        end = damaged.index(b" path=")
        start = end - len(damaged[:end]) + len(damaged[:end].rstrip(b"0123456789"))
        length = rng.choice([b"0", b"1", b"7", b"99999", b"-5", b"x", b""])
        damaged = damaged[:start] + length.rjust(end - start, b"0") + damaged[end:]
    return damaged


MUTATIONS = [flipped_bytes, truncated, bad_checksum, absurd_size, rewritten_fields]


@pytest.fixture(scope="module")
def decoder_parts():
    module = tiny_module()
    return ImageTransform(IMAGE_SIZE), SequenceBuilder(module.text_tokenizer, module.num_image_tokens(IMAGE_SIZE))


def read_shard(path: Path, decoder_parts) -> tuple[list[dict], SkipCounter]:
    skips = SkipCounter()
    decode = SampleDecoder(*decoder_parts, skips)
    samples = [decode(sample) for sample in tar_samples([{"url": str(path)}], handler=skips.handler)]
    return [sample for sample in samples if sample is not None], skips


@pytest.mark.timeout(120)
@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT], ids=["pax", "gnu"])
@pytest.mark.parametrize("mutation", MUTATIONS, ids=lambda m: m.__name__)
def test_a_damaged_shard_is_read_on_and_every_lost_sample_counted(synthetic_shards, decoder_parts, tmp_path,
                                                                   mutation, fmt):
    original = rewritten_shard(synthetic_shards / "vqa" / "train-000000.tar", fmt)
    (tmp_path / "intact.tar").write_bytes(original)
    intact, skips = read_shard(tmp_path / "intact.tar", decoder_parts)
    assert len(intact) == 16 and skips.total == 0
    for seed in range(12):
        damaged = mutation(original, random.Random(seed))
        assert damaged != original
        (tmp_path / "damaged.tar").write_bytes(damaged)
        tracemalloc.start()
        try:
            samples, skips = read_shard(tmp_path / "damaged.tar", decoder_parts)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < MEMORY_LIMIT, f"seed {seed}: {peak} bytes traced"
        assert all(s["image"].shape == (IMAGE_SIZE, IMAGE_SIZE, 3) and len(s["sequence"].input_ids) for s in samples)
        if len(samples) < len(intact):
            assert skips.total >= 1, f"seed {seed}: {len(intact) - len(samples)} samples lost without a count"
