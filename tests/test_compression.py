"""State records are zstd frames; the zlib records of earlier releases still read; anything
else (cut short, followed by other bytes, a bomb) is a ValueError, never a wrong text.
(That a stream record is one: tests/service/test_incremental_state.py.)"""

import json
import random
import threading
import zlib

import pytest
import zstandard

from streamweights.runtime import compression
from streamweights.runtime.compression import (
    MAX_RATIO,
    REUSE_MAX,
    ZSTD_MAGIC,
    compress,
    compressing,
    decompress,
)


def test_round_trip_and_the_zlib_of_earlier_releases():
    text = json.dumps({"a": list(range(2000)), "b": "x" * 5000}).encode()
    frame = compress(text)
    assert frame.startswith(ZSTD_MAGIC) and len(frame) < len(text) // 4
    assert decompress(frame) == text
    assert compress(text) == frame  # deterministic: restart equality compares bytes
    for level in (1, 6, 9):
        assert decompress(zlib.compress(text, level)) == text
    assert decompress(compress(b"")) == b""


_TEXT = json.dumps(list(range(5000))).encode()
_FRAME = compress(_TEXT)


@pytest.mark.parametrize("data", [
    pytest.param(_FRAME[:-4], id="cut"), pytest.param(_FRAME[:6], id="header only"),
    pytest.param(_FRAME + b"\0", id="trailing"), pytest.param(_FRAME + _FRAME, id="two frames"),
    pytest.param(b"not a record", id="garbage"),
    pytest.param(zlib.compress(_TEXT)[:-3], id="zlib cut"), pytest.param(b"", id="empty")])
def test_damaged_frames_are_refused(data):
    with pytest.raises(ValueError):
        decompress(data)


def test_a_frame_claiming_far_more_than_its_size_is_refused_before_decoding():
    bomb = compress(b"\0" * (64 << 20))  # 64 MiB of zeros in a few KiB
    assert len(bomb) * MAX_RATIO + (1 << 20) < 64 << 20
    with pytest.raises(ValueError, match="out of bounds"):
        decompress(bomb)



def test_a_frame_stating_a_small_size_cannot_write_more():
    # 50 MB of zeros whose header is changed to state 1,000 bytes: the decoder's buffer is
    # the stated size, so it fails at once rather than after writing the 50 MB.
    frame = compress(b"\0" * 50_000_000)
    stated = frame[4] >> 6  # Frame_Content_Size_flag (RFC 8878, 3.1.1.1.1): 2 = 4 bytes
    assert stated == 2 and int.from_bytes(frame[6:10], "little") == 50_000_000
    lying = frame[:6] + (1000).to_bytes(4, "little") + frame[10:]
    with pytest.raises(ValueError, match="zstd frame"):
        decompress(lying)


def test_a_zlib_bomb_stops_at_the_bound():
    bomb = zlib.compress(b"\0" * (64 << 20), 9)  # ~64 KiB: 1,000x
    assert len(bomb) * MAX_RATIO + (1 << 20) < 64 << 20
    with pytest.raises(ValueError, match="more than"):
        decompress(bomb)
    with pytest.raises(ValueError, match="followed by other bytes"):
        decompress(zlib.compress(_TEXT) + b"\0")


def test_the_reused_decompressor_reads_as_a_fresh_one():
    """Scenario: records of many sizes (up to past ``REUSE_MAX``, where a decompressor of
    their own reads them) compressed in turn, damaged frames refused in between by the
    thread's one decompressor, and the same in a second thread at once. We expect:
    every frame byte for byte what a fresh compressor writes, and every record read
    back after a refusal."""
    def run(seed: int, failures: list) -> None:
        generator = random.Random(seed)
        for _ in range(60):
            size = generator.choice((0, 1, 100, 5000, 70_000, REUSE_MAX + 1))
            text = bytes(generator.choice(b"abc{}:,0123456789") for _ in range(size))
            frame = compress(text)
            fresh = zstandard.ZstdCompressor(level=1, write_content_size=True).compress(text)
            if frame != fresh:
                failures.append(("frame", len(text)))
            if len(frame) > 12:
                try:
                    decompress(frame[:-3])
                    failures.append(("cut frame read", len(text)))
                except ValueError:
                    pass
            if decompress(frame) != text:
                failures.append(("read", len(text)))

    failures: list = []
    threads = [threading.Thread(target=run, args=(seed, failures)) for seed in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []


def test_a_commit_s_shared_compressor_writes_what_fresh_ones_write():
    """Scenario: inside ``compressing()`` (as a commit encodes its streams), records of
    sizes up and down (a large one then small ones: the context is reused across frames
    of any size), a nested block, and another thread compressing at the same time. We
    expect: every frame byte for byte what a fresh compressor writes (restart equality
    relies on the bytes), one compressor lent per thread and none after the block."""
    generator = random.Random(7)
    texts = [bytes(generator.choice(b"abc{}:,0123456789") for _ in range(size))
             for size in (70_000, 0, 1, 300, REUSE_MAX + 1, 5000, 100, 70_000, 2)]

    def fresh(text: bytes) -> bytes:
        return zstandard.ZstdCompressor(level=1, write_content_size=True).compress(text)

    others: list = []

    def other_thread() -> None:
        others.append(compression._PER_THREAD.compressor)
        others.append(all(compress(text) == fresh(text) for text in texts))

    with compressing():
        lent = compression._PER_THREAD.compressor
        frames = [compress(text) for text in texts]
        with compressing():
            assert compression._PER_THREAD.compressor is lent
            frames.append(compress(texts[0]))
        assert compression._PER_THREAD.compressor is lent
        thread = threading.Thread(target=other_thread)
        thread.start()
        thread.join()
    assert lent is not None
    assert frames == [fresh(text) for text in texts + texts[:1]]
    assert others == [None, True]
    assert compression._PER_THREAD.compressor is None
