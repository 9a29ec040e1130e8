"""Prometheus' text exposition format (0.0.4), written line by line for many series.

prometheus_client writes ``/metrics`` by building a ``Sample`` (a label dict) per series,
then sorting and escaping every label of every sample: ~8 us a series, 0.6 s a scrape for
1,000 streams of the default (~75 series each), seconds at 10,000, all of it holding the
GIL that the service loop needs. The service's loop-written families (``metrics.Loop*``)
write their own lines through this module instead: one template per family with its
labels already in sorted order, label values escaped once per scrape, the same bytes as
``prometheus_client.generate_latest`` (tests compare them byte for byte).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from operator import itemgetter

__all__ = ["Escapes", "LineTemplate", "family_header", "go_float"]


def _picker(order: tuple[int, ...]) -> Callable[[tuple[str, ...]], tuple[str, ...]]:
    """``values -> values in `order``` (a tuple, also for one label)."""
    if not order:
        return lambda values: ()
    if len(order) == 1:
        index = order[0]
        return lambda values: (values[index],)
    return itemgetter(*order)

_SPECIAL = {"inf": "+Inf", "-inf": "-Inf", "nan": "NaN"}


def go_float(value: float) -> str:
    """A sample's value as Prometheus (Go) writes it: ``+Inf``, ``NaN``, ``1.5e+06``;
    ``prometheus_client.utils.floatToGoString``'s text, with one comparison fewer per
    ordinary value (a test checks them equal over values of every kind)."""
    text = repr(float(value))
    dot = text.find(".")
    if dot > 6 and value > 0:  # Go writes exponents from 1e21 on; Python from 1e16
        mantissa = f"{text[0]}.{text[1:dot]}{text[dot + 1:]}".rstrip("0.")
        return f"{mantissa}e+{dot - 1:02d}"
    return _SPECIAL.get(text, text)


def family_header(name: str, documentation: str, kind: str) -> str:
    """The ``# HELP`` and ``# TYPE`` lines of one family (help text escaped)."""
    text = documentation.replace("\\", r"\\").replace("\n", r"\n")
    return f"# HELP {name} {text}\n# TYPE {name} {kind}\n"


_NEEDS_ESCAPE = ("\\", "\n", '"')


def plain(value: str) -> bool:
    """Whether a label value is written as it is (a string with nothing to escape)."""
    return isinstance(value, str) and not any(c in value for c in _NEEDS_ESCAPE)


class Escapes(dict):
    """Label values escaped as the format requires (backslash, newline, double quote),
    each distinct value once per scrape: a scrape names the same few thousand values
    (stream names, models, levels) in tens of thousands of lines."""

    def __missing__(self, value: str) -> str:
        escaped = value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
        self[value] = escaped
        return escaped


_NEGATIVE_INFINITY = float("-inf")


class LineTemplate:
    """The lines of one sample name with labels ``labelnames`` (plus ``extra``, e.g.
    ``le``, whose value the caller passes last): the labels come out sorted by name, as
    prometheus_client sorts them."""

    def __init__(self, name: str, labelnames: tuple[str, ...], extra: str | None = None):
        names = (*labelnames, extra) if extra is not None else tuple(labelnames)
        self.order = tuple(sorted(range(len(names)), key=lambda i: names[i]))
        labels = ",".join(f'{names[i]}="%s"' for i in self.order)
        self.pattern = f"{name}{{{labels}}} %s\n" if names else f"{name} %s\n"
        self.width = len(names)
        self.pick = _picker(self.order)

    def lines(self, samples: Iterable[tuple[tuple[str, ...], float]],
              escapes: Escapes | None) -> list[str]:
        """One line per ``(label values, value)``: values in ``labelnames`` order (then
        ``extra``'s), each value a ``float``. ``escapes``: ``None`` when every label
        value is known to be :func:`plain`. The loop a scrape spends its time in, so
        the value is written inline: ``repr`` is already Go's text for every float but
        infinities, NaN and those from 1e6 to 1e16 (``go_float`` writes those)."""
        pattern, pick, width = self.pattern, self.pick, self.width
        escape = escapes.__getitem__ if escapes is not None else None
        lines = []
        for values, value in samples:
            if len(values) != width:
                raise ValueError(f"{pattern.split('{')[0]}: {width} label values "
                                 f"expected, got {values}")
            if value >= 1e6 or value != value or value == _NEGATIVE_INFINITY:
                text = go_float(value)
            else:
                text = repr(value)
            if escape is None:
                lines.append(pattern % (*pick(values), text))
            else:
                lines.append(pattern % (*map(escape, pick(values)), text))
        return lines
