"""How state records are compressed: written as one zstd frame (level 1), read as zstd or
as the zlib stream earlier releases wrote.

A checkpoint compresses every changed stream's record, and the record is mostly the join's
waiting predictions and the chain's arrays (as base64 text when this was measured; their
bytes themselves since stream record format 7). zlib at level 1 took ~1.2 ms of
the ~1.9 ms a stream of the Kafka config cost per commit (110 KB of text, 47 KB out) and
~5.7 ms of the default config's 520 KB record; zstd at level 1 takes ~0.25 ms and ~0.9 ms
and writes fewer bytes (45 KB, 193 KB). Measured in ``bench/join_codec.py``.

The two are told apart by their first bytes (a zstd frame's magic number; a zlib stream
starts with its CMF byte), so every record an earlier release wrote still reads. A
release before this one cannot read a zstd record: it reports the record as one that
"cannot be decoded" (roll replicas forward, not back). Output is deterministic for a
given zstd library: the same text gives the same bytes, which restart equality relies on.
"""

from __future__ import annotations

import contextlib
import threading
import zlib
from collections.abc import Iterator

import zstandard

#: The first four bytes of every zstd frame (RFC 8878, 3.1.1).
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
#: zstd's level 1: its fastest standard level, smaller output than zlib's level 1 here.
LEVEL = 1
#: A frame claiming more than this many times its own size is refused before anything is
#: allocated: state records compress 2-3x, so only damage or a crafted frame gets near.
MAX_RATIO = 256
_SLACK = 1 << 20


#: Frames stating up to this size share their thread's decompressor; larger ones get one
#: of their own, freed after: a decompressor keeps buffers as large as the largest frame
#: it has read (~6 MB after a 5 MB one), which a thread's shared one would hold for good.
REUSE_MAX = 1 << 20


class _PerThread(threading.local):
    """One zstd decompressor per thread: making one costs ~15 us and a context
    allocation, once per stream record (10,000 of them to restore 10,000 streams; an
    instance may not be shared between threads), and a kept one holds ~1 MB. Each
    frame is read by a fresh ``decompressobj``, so it reads as a new instance would.
    Outside :func:`compressing` a compressor is made per call: a kept one held ~2 MB
    after 160 KB records, a fixed cost that small replicas would notice."""

    def __init__(self) -> None:
        self.decompressor = zstandard.ZstdDecompressor()
        #: The compressor :func:`compressing` lends this thread, if inside one.
        self.compressor: zstandard.ZstdCompressor | None = None


_PER_THREAD = _PerThread()


def compress(data: bytes) -> bytes:
    """One zstd frame of ``data``, its size written in the frame header."""
    compressor = _PER_THREAD.compressor
    if compressor is None:
        compressor = zstandard.ZstdCompressor(level=LEVEL, write_content_size=True)
    return compressor.compress(data)


@contextlib.contextmanager
def compressing() -> Iterator[None]:
    """Inside the block, :func:`compress` on this thread reuses one compressor, freed at
    the end. Making one (a zstd context) costs ~9 µs, as much as compressing a small
    record: a commit of a replica with 10,000 streams compresses ~60 streams' records
    and their join segments, and making contexts was ~2% of its CPU (perf). The frames
    are the same bytes either way (a context is reset for each frame;
    ``tests/test_compression.py`` compares them)."""
    if _PER_THREAD.compressor is not None:  # (nested: the outer block's one serves)
        yield
        return
    _PER_THREAD.compressor = zstandard.ZstdCompressor(level=LEVEL, write_content_size=True)
    try:
        yield
    finally:
        _PER_THREAD.compressor = None


def decompress(data: bytes) -> bytes:
    """The bytes that ``compress`` (or zlib, in earlier releases) was given; ValueError if
    ``data`` is neither exactly one whole zstd frame nor one whole zlib stream, or would
    give more than ``MAX_RATIO`` times its size (plus 1 MiB): a record is refused before
    that much memory is taken, whatever its header says."""
    bound = MAX_RATIO * len(data) + _SLACK
    if not data.startswith(ZSTD_MAGIC):
        try:  # (at most ``bound`` bytes come out: a zlib bomb stops there)
            reader = zlib.decompressobj()
            text = reader.decompress(data, bound)
        except zlib.error as error:
            raise ValueError(f"neither a zstd frame nor a zlib stream ({error})") from None
        if reader.unconsumed_tail:
            raise ValueError(f"zlib stream: more than {bound} bytes from a {len(data)}-byte "
                             "record")
        if not reader.eof or reader.unused_data:
            raise ValueError("zlib stream: truncated, or followed by other bytes")
        return text
    try:
        size = zstandard.get_frame_parameters(data).content_size
        if size == zstandard.CONTENTSIZE_UNKNOWN or size > bound:
            raise ValueError(f"zstd frame: content size {size} not stated or out of bounds "
                             f"for a {len(data)}-byte frame")
        # The decoder's buffer is the stated size: a frame that would write more than it
        # states fails there ("Destination buffer is too small"), not at the frame's end.
        decompressor = (_PER_THREAD.decompressor if size <= REUSE_MAX
                        else zstandard.ZstdDecompressor())
        reader = decompressor.decompressobj()
        text = reader.decompress(data)
        if not reader.eof or reader.unused_data or len(text) != size:
            raise ValueError("zstd frame: truncated, or followed by other bytes")
        return text
    except zstandard.ZstdError as error:
        raise ValueError(f"zstd frame: {error}") from None
