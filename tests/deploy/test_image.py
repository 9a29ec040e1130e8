"""The container image: the Dockerfile passes hadolint, and its exact entry command
serves the embedded demo and shuts down cleanly on SIGTERM within the pod's grace
period, resuming after a restart as if never stopped."""

from __future__ import annotations

import json
import signal
import socket
import time
import urllib.error
import urllib.request

import pytest
import yaml

from streamweights.runtime.state_store import LocalStateStore
from tests.deploy.image import DOCKERFILE, final_stage, start_entry_command
from tests.deploy.tools import K8S, REPO, run_tool
from tests.service.conftest import cli, read_json

#: The pod's grace period: what Kubernetes waits between SIGTERM and SIGKILL.
GRACE_SECONDS = yaml.safe_load((K8S / "base" / "statefulset.yaml").read_text())[
    "spec"]["template"]["spec"]["terminationGracePeriodSeconds"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
    except OSError:
        return 0, b""


def wait_until(condition, process, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            pytest.fail(f"entry command exited ({process.returncode}) before {what}:\n"
                        f"{process.stderr.read().decode()[-3000:]}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"no {what} after {timeout:.0f} s")
        time.sleep(0.05)


def stop(process, timeout: float) -> tuple[int, float]:
    """SIGTERM; return the exit code and the seconds it took."""
    began = time.monotonic()
    process.send_signal(signal.SIGTERM)
    try:
        code = process.wait(timeout=timeout)
    except Exception:
        process.kill()
        raise
    return code, time.monotonic() - began


def test_dockerfile_passes_hadolint_and_builds_a_slim_non_root_image():
    result = run_tool("hadolint", str(DOCKERFILE))
    assert result.returncode == 0, result.stdout + result.stderr
    stage = final_stage()
    assert stage.stages >= 2, "multi-stage: build tools stay in the build stage"
    assert stage.user.split(":")[0] not in ("", "0", "root")
    for command in stage.runs:   # the final stage installs nothing
        assert not any(word in command for word in ("pip ", "apt-get", "gcc", "make")), command
    assert stage.entrypoint[0] == "python"
    assert (REPO / stage.local(stage.entrypoint[1]).removeprefix(str(REPO) + "/")).is_file()
    assert "slim" in DOCKERFILE.read_text().split("ARG PYTHON_IMAGE=", 1)[1].split()[0]


def test_entry_command_serves_health_ready_and_metrics_on_the_embedded_demo(tmp_path):
    """Scenario: the image's entry command exactly as in the Dockerfile, with the image's
    own config (the embedded demo, 60,000 events) and environment; `docker run IMAGE
    --http-port P` adds the port. We expect: /healthz 200, then /readyz 200 once the
    state is restored, /metrics with the demo stream's series, and SIGTERM ends it with
    exit 0 and a checkpoint within the pod's grace period."""
    stage = final_stage()
    assert stage.local(stage.env["STREAMWEIGHTS_CONFIG"]) == str(REPO / "configs" / "demo.yaml")
    port = free_port()
    process = start_entry_command(stage, tmp_path, "--http-port", str(port))
    try:
        wait_until(lambda: get(port, "/healthz")[0] == 200, process, "/healthz")
        wait_until(lambda: get(port, "/readyz")[0] == 200, process, "/readyz 200")
        wait_until(lambda: b'streamweights_events_total{kind="prediction",stream="demo"}'
                   in get(port, "/metrics")[1], process, "demo events in /metrics")
        status, body = get(port, "/v1/streams")
        assert status == 200 and "demo" in json.loads(body)["streams"]
    finally:
        code, seconds = stop(process, timeout=GRACE_SECONDS)
    stderr = process.stderr.read().decode()
    assert code == 0, stderr[-3000:]
    assert seconds < GRACE_SECONDS
    assert "stop requested: checkpointing" in stderr
    assert LocalStateStore(tmp_path / "streamweights-state").load() is not None


def _demo_config(folder, events: int) -> str:
    document = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    document["source"]["events"] = events
    document["state_dir"] = str(folder / "state")
    document["checkpoint"] = {"every_records": 500, "every_seconds": 30}
    document["http"] = {"host": "127.0.0.1", "port": None}
    document["outputs"] = {"adapted": str(folder / "adapted.jsonl"),
                           "weights": str(folder / "weights.jsonl"),
                           "dead_letter": str(folder / "dead-letter.jsonl")}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(document))
    return str(path)


def test_sigterm_checkpoints_exits_zero_within_grace_and_a_restart_loses_nothing(tmp_path):
    """Scenario: the entry command runs a 6,000-event replay with a mounted config (as
    the pod's ConfigMap is); after its first checkpoint it gets SIGTERM, as Kubernetes
    sends on a rolling update; then the same command starts again on the same state.
    We expect: exit 0 well within terminationGracePeriodSeconds, the snapshot taken at
    the stop (later than the first one), and a restart that ends with exactly the summary
    and output files of an uninterrupted run (the crash tests' comparison)."""
    events = 6000
    reference = tmp_path / "reference"
    summary = reference / "summary.json"
    result = cli("run", "--config", _demo_config(reference, events), "--summary", str(summary))
    assert result.returncode == 0, result.stderr[-2000:]
    expected = read_json(summary)

    stage = final_stage()
    folder = tmp_path / "terminated"
    config = _demo_config(folder, events)
    store = LocalStateStore(folder / "state")
    first = folder / "first.json"
    process = start_entry_command(stage, tmp_path, "--summary", str(first),
                                  env={"STREAMWEIGHTS_CONFIG": config})
    wait_until(lambda: bool(store.snapshots()), process, "a first snapshot")
    first_position = store.load()["position"]
    code, seconds = stop(process, timeout=GRACE_SECONDS)
    stderr = process.stderr.read().decode()
    assert code == 0, stderr[-3000:]
    assert seconds < GRACE_SECONDS, f"took {seconds:.1f} s, grace is {GRACE_SECONDS} s"
    print(f"SIGTERM to exit: {seconds:.2f} s (grace {GRACE_SECONDS} s)")
    stopped = read_json(first)
    assert stopped["complete"] is False
    assert store.load()["position"] == stopped["records"] >= first_position

    restarted = start_entry_command(stage, tmp_path, "--summary", str(folder / "final.json"),
                                    env={"STREAMWEIGHTS_CONFIG": config})
    assert restarted.wait(timeout=600) == 0, restarted.stderr.read().decode()[-3000:]
    assert "restored snapshot" in restarted.stderr.read().decode()
    assert read_json(folder / "final.json") == expected
    for name in ("weights.jsonl", "adapted.jsonl"):
        assert (folder / name).read_bytes() == (reference / name).read_bytes(), name
