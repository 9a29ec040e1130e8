"""The service writes /metrics itself (``ServiceMetrics.exposition``, through
``runtime.prometheus_text``): the text must be prometheus_client's ``generate_latest``
of the same registry, byte for byte, whatever the label values and the values."""

from __future__ import annotations

import math
import random
import struct

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.utils import floatToGoString

from streamweights.runtime.metrics import ServiceMetrics
from streamweights.runtime.prometheus_text import go_float, sample_lines

#: Values at every edge of Go's and Python's float texts: the signs of zero and of
#: infinity, NaN, the 1e6 and 1e16 switches to exponents, the extremes.
EDGES = (0.0, -0.0, 1.0, -1.0, 0.1, 1e-5, 1e-4, 999_999.0, 999_999.999_999_9, 1e6,
         1_000_000.5, 1_234_567.0, 1e7, 10_000_000.0, 1e15, 9_999_999_999_999_998.0, 1e16,
         1e16 + 2, 1e21, 1e22, 1.7976931348623157e308, 5e-324, 2.2250738585072014e-308,
         -1e6, -1e7, -1e16, -1e22, math.inf, -math.inf, math.nan, -math.nan)


def _floats(count: int, seed: int) -> list[float]:
    """Random doubles of every magnitude (random bit patterns) and random ordinary ones."""
    generator = random.Random(seed)
    values = []
    for _ in range(count):
        bits = generator.getrandbits(64)
        values.append(struct.unpack("<d", struct.pack("<Q", bits))[0])
        values.append(generator.uniform(-2e7, 2e7))
        values.append(generator.random() * 10 ** generator.randint(-8, 24))
    return values


def test_values_are_written_as_prometheus_client_writes_them():
    """Scenario: edge values and 60,000 random doubles (every exponent) written by the
    core alone (``go_float``) and in a sample line; integers and a bool in a line.
    We expect: exactly ``floatToGoString``'s text each time."""
    values = [*EDGES, *_floats(20_000, 3)]
    lines = sample_lines("m", ("a",), [(("x",), value) for value in values]).decode()
    assert lines.splitlines() == [f'm{{a="x"}} {floatToGoString(v)}' for v in values]
    for value in values:
        assert go_float(value) == floatToGoString(value), value
    numbers = [0, 1, -1, 7, 999_999, 1_000_000, 12_345_678, 10**16, 10**22, True]
    lines = sample_lines("m", (), [((), number) for number in numbers]).decode()
    assert lines.splitlines() == [f"m {floatToGoString(n)}" for n in numbers]


def test_label_values_are_escaped_and_sorted_as_prometheus_client_does():
    """Scenario: label values with backslashes, quotes, newlines, braces, commas and
    non-ASCII text, labels given out of name order, a value read from an attribute.
    We expect: the labels sorted by name, values escaped as the format says, and the
    parser reads the values back; a wrong number of label values, a label value that
    is not a string and a value that is not a number are errors, not lines."""
    hostile = 'a\\b"c\nd{e},f=g ünï'
    line = sample_lines("m", ("stream", "alpha", "le"), [((hostile, "0.1", "+Inf"), 2.0)])
    assert line == 'm{alpha="0.1",le="+Inf",stream="a\\\\b\\"c\\nd{e},f=g ünï"} 2.0\n'.encode()
    [family] = text_string_to_metric_families(line.decode())
    assert family.samples[0].labels == {"alpha": "0.1", "le": "+Inf", "stream": hostile}

    class Child:
        value = 0.25

    assert sample_lines("g", ("s",), [(("x",), Child())], attribute="value") == \
        b'g{s="x"} 0.25\n'
    with pytest.raises(ValueError, match="3 label values expected"):
        sample_lines("m", ("a", "b", "c"), [(("only",), 1.0)])
    with pytest.raises(TypeError, match="label values must be str"):
        sample_lines("m", ("a",), [((7,), 1.0)])
    with pytest.raises(TypeError):
        sample_lines("m", ("a",), [(("x",), "1.0")])


def test_the_service_exposition_is_generate_latest_byte_for_byte():
    """Scenario: every family of the service's metrics written to at random: gauges and
    counters whose label values need escaping or not, edge values, counts and
    latencies kept outside the families (as the core's lane keeps them), and
    prometheus_client's own series (dead letters with a hostile reason, checkpoint
    times, readiness). Read after every few hundred writes.
    We expect: ``exposition()`` equals ``generate_latest`` of the same registry every
    time, and the text parses."""
    metrics = ServiceMetrics()
    generator = random.Random(29)
    names = ("demo", "segment-00042", 'quote"d', "back\\slash", "new\nline", "ünï")
    outside_counts: dict[tuple[str, ...], float] = {}
    outside_latency: dict[tuple[str, ...], tuple[list[int], float]] = {}
    metrics.events.count_also(lambda: dict(outside_counts))
    metrics.update_latency.observe_also(lambda: dict(outside_latency))
    width = len(metrics.update_latency.bounds) + 1
    gauges = [metrics.pending, metrics.ensemble_weight, metrics.portfolio_weight,
              metrics.log_loss, metrics.ece, metrics.weights_version,
              metrics.conformal_coverage, metrics.conformal_target, metrics.conformal_size,
              metrics.performance]
    counters = [metrics.events, metrics.joined, metrics.expired, metrics.drift]
    for step in range(3_000):
        choice = generator.random()
        labels = lambda family: [generator.choice(names)] + [  # noqa: E731
            generator.choice(("adapted", "raw:nb", "0.1", "run")) for _ in
            family.labelnames[1:]]
        if choice < 0.5:
            family = generator.choice(gauges)
            value = generator.choice([*EDGES, generator.random(), generator.uniform(-1e8, 1e8)])
            family.labels(*labels(family)).set(value)
        elif choice < 0.75:
            family = generator.choice(counters)
            family.labels(*labels(family)).inc(generator.choice((1, 2, 0.5)))
        elif choice < 0.85:
            key = (generator.choice(names), generator.choice(("prediction", "label")))
            outside_counts[key] = outside_counts.get(key, 0) + generator.randint(0, 3)
        elif choice < 0.95:
            kind = generator.choice(("prediction", "label", "invalid"))
            if generator.random() < 0.5:
                metrics.update_latency.labels(kind).observe(generator.choice(
                    (*metrics.update_latency.bounds, 0.0, 3e-5, 12.0)))
            else:
                counts, total = outside_latency.get((kind,), ([0] * width, 0.0))
                slot = generator.randrange(width)
                outside_latency[(kind,)] = ([c + (i == slot) for i, c in enumerate(counts)],
                                            total + generator.random() * 1e-3)
        else:
            metrics.invalid.labels(generator.choice(("bad json", 'say "no"\n'))).inc()
            metrics.checkpoint_duration.observe(generator.random())
            metrics.ready.set(generator.choice((0, 1)))
        if step % 250 == 0 or step == 2_999:
            served = metrics.exposition()
            assert served == generate_latest(metrics.registry), step
    families = {family.name for family in text_string_to_metric_families(served.decode())}
    assert {"streamweights_events", "streamweights_update_latency_seconds",
            "streamweights_conformal_coverage", "streamweights_invalid_records"} <= families
