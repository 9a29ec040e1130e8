"""Which series names the service exports and which the rules record: what a rule or a
dashboard query may name."""

from __future__ import annotations

import re

import yaml

from streamweights.runtime.metrics import ServiceMetrics
from tests.deploy.tools import K8S

RULES_FILE = K8S / "prometheus" / "streamweights.rules.yml"
_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}
#: Identifiers in PromQL that look like series names (label names and functions aside).
_NAME = re.compile(r"\b(streamweights(?:_|:)[A-Za-z0-9_:]+)")


def exported_series() -> set[str]:
    """Series names on /metrics, from the service's own registry."""
    names = set()
    for family in ServiceMetrics().registry.collect():
        names.update(family.name + suffix for suffix in _SUFFIXES[family.type])
    return names


def recorded_series() -> set[str]:
    groups = yaml.safe_load(RULES_FILE.read_text())["groups"]
    return {rule["record"] for group in groups for rule in group["rules"] if "record" in rule}


def series_named_in(expression: str) -> set[str]:
    return set(_NAME.findall(expression))
