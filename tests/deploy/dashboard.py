"""The Grafana dashboard's queries, with its template variables filled in."""

from __future__ import annotations

import json

from tests.deploy.tools import K8S

DASHBOARD = K8S / "grafana" / "streamweights-dashboard.json"


def load() -> dict:
    return json.loads(DASHBOARD.read_text())


def panel_queries(dashboard: dict) -> list[tuple[str, str]]:
    """``(panel title, PromQL)`` for every target of every panel."""
    return [(panel["title"], target["expr"]) for panel in dashboard["panels"]
            for target in panel.get("targets", [])]


def concrete(expression: str, job: str = ".*", stream: str = ".*") -> str:
    """The query Grafana sends with "All" selected (or the given values)."""
    return expression.replace("$job", job).replace("$stream", stream)
