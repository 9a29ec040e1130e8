"""Prometheus' text exposition format (0.0.4), written for many labelled series at once.

prometheus_client writes ``/metrics`` by building a ``Sample`` (a label dict) per series,
then sorting and escaping every label of every sample: ~8 us a series, 0.6 s a scrape of
1,000 streams of the default (~75 series each), ~7 s at 10,000, all of it holding the
GIL that the service loop needs. The service's loop-written families (``metrics.Loop*``)
hand their series to the core instead (``native/src/exposition.rs``), which writes the
same bytes as ``prometheus_client.generate_latest`` (tests compare them byte for byte).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from streamweights import _native

__all__ = ["family_header", "go_float", "sample_lines"]


def family_header(name: str, documentation: str, kind: str) -> bytes:
    """The ``# HELP`` and ``# TYPE`` lines of one family (help text escaped)."""
    text = documentation.replace("\\", r"\\").replace("\n", r"\n")
    return f"# HELP {name} {text}\n# TYPE {name} {kind}\n".encode()


def sample_lines(name: str, labelnames: Sequence[str],
                 rows: list[tuple] | dict[tuple[str, ...], Any], value_at: int = 1,
                 attribute: str | None = None) -> bytes:
    """One sample line per series: ``rows`` a list of tuples, ``row[0]`` the label
    values in ``labelnames`` order and ``row[value_at]`` the value, or a dict from label
    values to the value; with ``attribute``, the object holding the value (a series'
    child). Labels come out sorted by name and escaped, values as Go writes them
    (``go_float``)."""
    return _native.exposition_lines(name, list(labelnames), rows, value_at, attribute)


def go_float(value: float) -> str:
    """A sample's value as Prometheus (Go) writes it: ``+Inf``, ``NaN``, ``1.5e+06``
    (``prometheus_client.utils.floatToGoString``'s text)."""
    return _native.go_float(value)
