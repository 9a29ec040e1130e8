"""Alert and recording rules: promtool checks the file and runs its unit tests (each
alert fires on one history and stays silent on another); the PrometheusRule carries the
same groups; every rule names only series that exist."""

from __future__ import annotations

import importlib.util
import re

import pytest
import yaml

from tests.deploy.metric_names import (
    RULES_FILE,
    exported_series,
    recorded_series,
    series_named_in,
)
from tests.deploy.tools import K8S, REPO, run_tool

RULES_TESTS = K8S / "prometheus" / "streamweights.rules.test.yml"
PROMETHEUS_RULE = K8S / "components" / "monitoring" / "prometheusrule.yaml"
REQUIRED_ALERTS = {"StreamweightsConsumerLagGrowing", "StreamweightsAdaptedWorseThanRawBest",
                   "StreamweightsDriftStorm", "StreamweightsNoEvents",
                   "StreamweightsCheckpointsStalled", "StreamweightsKafkaTransactionAborts",
                   "StreamweightsDeadLetterRate", "StreamweightsConformalCoverageBelowTarget",
                   "StreamweightsEstimatedAccuracyDrop"}


def _rules():
    return [rule for group in yaml.safe_load(RULES_FILE.read_text())["groups"]
            for rule in group["rules"]]


def test_promtool_check_rules_passes():
    result = run_tool("promtool", "check", "rules", str(RULES_FILE))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(_rules())} rules found" in result.stdout + result.stderr


def test_promtool_unit_tests_pass():
    """Scenario: promtool replays the synthetic histories of streamweights.rules.test.yml
    through the rules. We expect: every expected alert (labels and annotations) and
    every expected silence holds."""
    result = run_tool("promtool", "test", "rules", str(RULES_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_every_alert_has_a_firing_and_a_silent_unit_test():
    """Each required alert is tested firing (a non-empty exp_alerts) and silent (an empty
    one, or another label set than the firing one in the same test)."""
    alerts = {rule["alert"] for rule in _rules() if "alert" in rule}
    assert alerts >= REQUIRED_ALERTS
    fired, silent = set(), set()
    for case in yaml.safe_load(RULES_TESTS.read_text())["tests"]:
        series = [s["series"] for s in case.get("input_series", [])]
        for check in case.get("alert_rule_test", []):
            name = check["alertname"]
            if check.get("exp_alerts"):
                fired.add(name)
                firing = {tuple(sorted(a["exp_labels"].items())) for a in check["exp_alerts"]}
                if len(series) > len(firing):   # other series in the history stay silent
                    silent.add(name)
            else:
                silent.add(name)
    assert alerts <= fired, f"never tested firing: {alerts - fired}"
    assert alerts <= silent, f"never tested silent: {alerts - silent}"


@pytest.mark.parametrize(("expression", "out_of_reach", "alert"), [
    ("(increase(streamweights_drift_events_total[10m])) > 5",
     "(increase(streamweights_drift_events_total[10m])) > 500", "StreamweightsDriftStorm"),
    ("streamweights:conformal_coverage:rolling_minus_target < -0.05",
     "streamweights:conformal_coverage:rolling_minus_target < -0.5",
     "StreamweightsConformalCoverageBelowTarget"),
])
def test_an_alert_that_cannot_fire_fails_the_unit_tests(tmp_path, expression, out_of_reach,
                                                        alert):
    """The unit tests can fail: with an alert's threshold raised out of reach, promtool
    reports the missing alert."""
    broken = RULES_FILE.read_text().replace(expression, out_of_reach)
    assert broken != RULES_FILE.read_text()
    (tmp_path / "streamweights.rules.yml").write_text(broken)
    (tmp_path / "tests.yml").write_text(RULES_TESTS.read_text())
    result = run_tool("promtool", "test", "rules", "tests.yml", cwd=tmp_path)
    assert result.returncode != 0
    assert alert in result.stdout + result.stderr


def test_rules_name_only_exported_or_recorded_series():
    known = exported_series() | recorded_series()
    for rule in _rules():
        unknown = series_named_in(str(rule["expr"])) - known
        assert not unknown, f"{rule.get('alert') or rule.get('record')}: unknown {unknown}"
    for name in recorded_series():
        assert re.fullmatch(r"streamweights:[a-z0-9_]+:[a-z0-9_]+", name), name


def test_prometheus_rule_object_carries_the_same_groups():
    """The operator's PrometheusRule is generated from the plain file
    (scripts/sync_prometheusrule.py); they never drift apart."""
    spec = importlib.util.spec_from_file_location("sync", REPO / "scripts" /
                                                  "sync_prometheusrule.py")
    sync = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sync)
    assert PROMETHEUS_RULE.read_text() == sync.render(), \
        "run: python scripts/sync_prometheusrule.py"
    rule = yaml.safe_load(PROMETHEUS_RULE.read_text())
    assert rule["spec"]["groups"] == yaml.safe_load(RULES_FILE.read_text())["groups"]
