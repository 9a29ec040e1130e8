"""Bounded join of predictions with their delayed labels.

A prediction waits here, with what every adapter stage saw when it was served, until its
label arrives. The buffer is bounded twice: by ``max_pending`` entries (the oldest is
evicted when a new one would not fit) and by ``ttl_seconds`` of *event time* (a
prediction older than the newest event time seen minus the TTL is expired). Nothing
leaves silently: every eviction is counted by cause and returned to the caller, which
counts and logs it.

For snapshots each entry is encoded once, the first time a snapshot holds it, and that
text is kept until the entry leaves: a snapshot of a stream joins the kept texts instead of
re-encoding every waiting prediction each commit (it was 82% of a commit's encoding time).
An entry's text is the compact JSON ``[id, ts, skeleton, data]``: the payload packed by
``state_codec.pack_state`` (all its arrays' bytes in one base64 string, their dtypes and
shapes in a skeleton shared by entries that look alike): for the demo chain's entry
(five arrays, 100 floats) about 2.5 µs, 3-4 µs in a loop on a loaded machine, against
15-17 µs as tagged JSON arrays (``bench/join_codec.py``). :func:`decode_entry` gives back
``[id, ts, payload]`` with the payload bit for bit as it was, as ``state_dict()["entries"]``
holds it.

A snapshot writes the join incrementally, in *segments* (:meth:`PendingJoin.encoded_segments`):
the entries no snapshot holds yet, in arrival order, become new segments (a JSON array
of entry texts each, closed at ``SEGMENT_BYTES``), written once under their own keys;
the stream's record holds only the *layout*: the live segments in arrival order, each
with its size and the indices of its entries that have left since. A segment whose
entries have all left is dropped (its key deleted). So with long label delays a commit
writes the new predictions and a few numbers per label, not every waiting prediction
(100,000 waiting: 16 MB and ~0.5 s per commit before). When more entries have left the
written segments than still wait, the next snapshot writes every entry afresh (a
*rebase*; also asked by a full local snapshot): the cost of a rebase is paid for by the
labels that came before it, and a restore never reads more than twice the live entries.

Entries are kept in arrival order. Within a task the runtime merges records in
event-time order, so arrival order is event-time order and expiry only ever looks at
the head; a prediction that arrives out of order expires when it reaches the head.
The head's event time is kept (``head_ts``), so a caller can tell in one comparison
whether :meth:`expire` has anything to do (the per-record path asks on every record).
"""

from __future__ import annotations

import json
from json.encoder import encode_basestring_ascii
from typing import Any, NamedTuple

from streamweights import _native
from streamweights.adapters.state_codec import pack_state, unpack_state

#: A served prediction waiting for its label: ``Pending(id, ts, payload)``, read-only
#: attributes of those names, compared and shown as a dataclass would be. Native
#: (``native/src/pending.rs``): the record lane makes one per prediction.
Pending = _native.Pending


def _nonfinite_text(value: float) -> str:
    """A NaN or an infinity as ``json.dumps`` writes it."""
    return "NaN" if value != value else ("Infinity" if value > 0 else "-Infinity")


def encode_entry(event_id: str, ts: float, payload: Any) -> str:
    """One waiting prediction as the compact JSON text ``[id, ts, skeleton, data]`` (see
    the module doc); ``ts`` is written as a float, as a restore reads it back."""
    skeleton, data = pack_state(payload)
    ts = float(ts)
    name = encode_basestring_ascii(event_id) if type(event_id) is str else json.dumps(event_id)
    return (f'[{name},{float.__repr__(ts) if ts - ts == 0.0 else _nonfinite_text(ts)},'
            f'{skeleton},"{data}"]')


def decode_entry(entry: Any) -> list[Any]:
    """``[id, ts, payload]`` from an entry :func:`encode_entry` wrote, parsed from its
    JSON; ValueError if it is not one."""
    if not isinstance(entry, list) or len(entry) != 4 or not isinstance(entry[3], str):
        raise ValueError("join entry: expected [id, ts, skeleton, data], got "
                         f"{str(entry)[:80]}")
    event_id, ts, skeleton, data = entry
    return [event_id, ts, unpack_state(skeleton, data)]


#: Text bytes at which a snapshot segment of the join is closed (before compression): a
#: segment is one changelog record, well under Kafka's default 1 MB message limit.
SEGMENT_BYTES = 256 * 1024


class JoinDelta(NamedTuple):
    """An incremental snapshot of the join (:meth:`PendingJoin.encoded_segments`)."""

    #: ``(segment id, JSON array text of its entries)`` for each new segment.
    segments: list[tuple[int, str]]
    #: ``{"next": id, "segments": [[id, size, [indices gone]], ...]}`` in arrival order.
    layout: dict[str, Any]
    #: Segments emptied since the last snapshot (no longer read: delete them).
    dropped: list[int]


class PendingJoin(_native.PendingJoin):
    """Pending predictions keyed by id, bounded in count and in event-time age.

    The join itself is native (``native/src/join.rs``: the record lane adds and takes
    entries without a Python dict in between); the verbs are ``add``, ``get``, ``pop``,
    ``expire``, ``waiting()`` (the entries in arrival order), ``len`` and ``in``, with the
    attributes ``max_pending``, ``ttl_seconds``, ``head_ts`` and the three counters
    (``expired_total``, ``evicted_total``, ``joined_total``). This class adds the
    snapshot verbs, whose entry texts are Python's codec (:func:`encode_entry`); the
    native ``segment_delta`` keeps each entry's text from the first snapshot that writes
    it until it leaves, so a rebase writes kept texts rather than encoding anew."""

    __slots__ = ()

    def encoded_segments(self, cap: int = SEGMENT_BYTES, rebase: bool = False) -> JoinDelta:
        """What an incremental snapshot writes of the join (see the module doc): the
        entries no snapshot holds yet as new segments (JSON arrays of
        :func:`encode_entry` texts of at most about ``cap`` bytes), the layout of the
        live segments, the next segment id, and the segments emptied since the last
        call; with ``rebase`` every entry goes into new segments (a full snapshot)."""
        texts, layout, next_segment, dropped = self.segment_delta(encode_entry, cap, rebase)
        return JoinDelta(texts, {"next": next_segment, "segments": layout}, dropped)

    def state_dict(self, entries: bool = True) -> dict[str, Any]:
        """The join's state; without ``entries`` the waiting predictions are left out
        (an empty list) for a caller that writes :meth:`encoded_segments` beside it."""
        return {
            "entries": [[e.id, e.ts, e.payload] for e in self.waiting()] if entries else [],
            "expired_total": self.expired_total,
            "evicted_total": self.evicted_total,
            "joined_total": self.joined_total,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.restore([Pending(event_id, float(ts), payload)
                      for event_id, ts, payload in state["entries"]],
                     int(state["expired_total"]), int(state["evicted_total"]),
                     int(state["joined_total"]))
        if "segments" in state:  # restored from an incremental snapshot: build on it
            layout = state["segments"]
            self.assign_segments([(int(segment), int(size), [int(i) for i in gone])
                                  for segment, size, gone in layout["segments"]],
                                 int(layout["next"]))
