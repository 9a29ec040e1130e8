"""The README's Deploy section: in order from applying the dev overlay to the dashboard,
and every path and object it names exists."""

from __future__ import annotations

import re

from tests.deploy.tools import REPO, render


def _section() -> str:
    text = (REPO / "README.md").read_text()
    assert "\n## Deploy\n" in text
    return text.split("\n## Deploy\n", 1)[1].split("\n## ", 1)[0]


def test_steps_run_in_order_from_apply_to_dashboard():
    section = _section()
    steps = ["docker build -t streamweights:0.1.0 .", "kubectl apply -k k8s/overlays/dev",
             "rollout status statefulset/streamweights", "port-forward svc/grafana 3000:3000",
             "kubectl delete -k k8s/overlays/dev"]
    positions = [section.index(step) for step in steps]
    assert positions == sorted(positions)


def test_named_paths_and_objects_exist():
    section = _section()
    for path in set(re.findall(r"`((?:k8s|tests|scripts)/[^`\s]*)`", section)):
        assert (REPO / path.rstrip("/")).exists(), path
    objects = {(d["kind"].lower(), d["metadata"]["name"]) for d in render("overlays/dev")}
    for kind, name in re.findall(r"\b(statefulset|job|svc)/([a-z0-9-]+)", section):
        kind = "service" if kind == "svc" else kind
        assert (kind, name) in objects, f"{kind}/{name}"
