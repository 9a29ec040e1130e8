"""The Grafana dashboard: the panels users need, queries that name only series the
service exports or the rules record, drift events as annotations. (Its queries are run
against a real Prometheus in test_prometheus_scrape.py.)"""

from __future__ import annotations

from tests.deploy.dashboard import load, panel_queries
from tests.deploy.metric_names import exported_series, recorded_series, series_named_in


def test_dashboard_has_the_panels_users_need():
    dashboard = load()
    titles = " | ".join(panel["title"] for panel in dashboard["panels"]).lower()
    for needed in ("ensemble weights", "log-loss: adapted vs raw", "ece: adapted vs raw",
                   "consumer lag", "records per second", "latency"):
        assert needed in titles, needed
    queries = " ".join(expression for _, expression in panel_queries(dashboard))
    assert "update_latency_seconds:p50" in queries and "update_latency_seconds:p99" in queries
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_every_query_names_known_series():
    known = exported_series() | recorded_series()
    dashboard = load()
    for title, expression in panel_queries(dashboard):
        named = series_named_in(expression)
        assert named, f"{title}: names no streamweights series"
        assert named <= known, f"{title}: unknown {named - known}"
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            assert series_named_in(variable["definition"]) <= known, variable["name"]


def test_drift_events_are_annotations_and_the_data_source_is_a_variable():
    dashboard = load()
    drift = [a for a in dashboard["annotations"]["list"] if a.get("name") == "Drift events"]
    assert len(drift) == 1 and drift[0]["enable"]
    assert "streamweights_drift_events_total" in drift[0]["expr"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["query"] == "prometheus"
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
