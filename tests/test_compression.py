"""State records are zstd frames; the zlib records of earlier releases still read; anything
else (cut short, followed by other bytes, a bomb) is a ValueError, never a wrong text.
(That a stream record is one: tests/service/test_incremental_state.py.)"""

import json
import zlib

import pytest

from streamweights.runtime.compression import MAX_RATIO, ZSTD_MAGIC, compress, decompress


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

