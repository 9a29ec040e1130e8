"""The container image for real: the repository's Dockerfile built by buildah and its
entry command run inside the image on the demo, to its summary.

No Docker daemon or image registry is reachable in CI, so the Dockerfile's default base
(``python:*-slim-bookworm`` from Docker Hub) is swapped, through its ``PYTHON_IMAGE``
build argument, for the nearest thing made from Debian's own packages: a bookworm root
file system by ``mmdebstrap`` with python3, its venv module and ``python`` on PATH.
Everything else is the Dockerfile as users build it (``--format docker``, as ``docker
build`` writes), with buildah's chroot isolation (no container runtime needed; ``podman
run`` cannot set resource limits on these machines, ``buildah run`` works).

Costs, measured on a 2-core shared machine: the base, once, 2 min (cached as a tarball
in ``.cache/image`` and as a local image); the build, every run, ~1.5 min (pip fetches
the package's wheels from PyPI: the Dockerfile keeps no pip cache); the demo run, seconds.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import pathlib
import subprocess
import time
import uuid

import pytest

from tests.deploy.image import final_stage
from tests.deploy.tools import REPO, tool
from tests.service.conftest import DEMO_CONFIG, cli

CACHE = REPO / ".cache" / "image"
#: What the Dockerfile's stages need of their base: ``python -m venv`` (python3-venv,
#: python-is-python3) and ``groupadd``/``useradd`` (passwd).
BASE_PACKAGES = ("python3", "python3-venv", "python-is-python3", "passwd")
#: Like the slim images: no manuals, docs (copyright files kept) or translations.
BASE_DPKG_OPTIONS = ("path-exclude=/usr/share/man/*", "path-exclude=/usr/share/doc/*",
                     "path-include=/usr/share/doc/*/copyright", "path-exclude=/usr/share/locale/*")
SUITE, MIRROR = "bookworm", "http://deb.debian.org/debian"
#: Demo records the image's entry command processes (about 2 s).
EVENTS = 3000


def buildah(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([tool("buildah"), *args], capture_output=True, text=True,
                          timeout=timeout)


def base_image() -> str:
    """The local Debian base image, made (tarball by mmdebstrap, then imported) when the
    cache lacks it; one process at a time makes it."""
    recipe = "\n".join([SUITE, MIRROR, *BASE_PACKAGES, *BASE_DPKG_OPTIONS])
    key = hashlib.sha256(recipe.encode()).hexdigest()[:12]
    name = f"localhost/streamweights-test-base:{SUITE}-{key}"
    CACHE.mkdir(parents=True, exist_ok=True)
    with (CACHE / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if buildah("inspect", "--type", "image", name).returncode == 0:
            return name
        tarball = CACHE / f"{SUITE}-{key}.tar"
        if not tarball.exists():
            partial = tarball.with_suffix(".partial.tar")
            made = subprocess.run(
                [tool("mmdebstrap"), "--variant=apt", "--include=" + ",".join(BASE_PACKAGES),
                 *(f"--dpkgopt={option}" for option in BASE_DPKG_OPTIONS),
                 SUITE, str(partial), MIRROR], capture_output=True, text=True, timeout=900)
            assert made.returncode == 0, f"mmdebstrap failed:\n{made.stderr[-3000:]}"
            partial.rename(tarball)
        container = buildah("from", "scratch").stdout.strip()
        try:
            added = buildah("add", container, str(tarball), "/")
            assert added.returncode == 0, added.stderr
            committed = buildah("commit", "--quiet", container, name)
            assert committed.returncode == 0, committed.stderr
        finally:
            buildah("rm", container)
        return name


def host_trust_mounts() -> list[str]:
    """The host's CA bundle and pip configuration, read-only in the build's RUN steps, so
    pip inside reaches PyPI the way pip here does (e.g. through a TLS-inspecting proxy
    whose CA only this machine trusts)."""
    mounts = []
    for path in ("/etc/ssl/certs/ca-certificates.crt", "/etc/pip.conf"):
        if pathlib.Path(path).is_file():
            mounts += ["--volume", f"{path}:{path}:ro"]
    return mounts


def _numbers(value, path: str = "") -> dict[str, float]:
    """Every number in a JSON value, by its path."""
    if isinstance(value, dict | list):
        items = value.items() if isinstance(value, dict) else enumerate(value)
        found: dict[str, float] = {}
        for key, item in items:
            found.update(_numbers(item, f"{path}/{key}"))
        return found
    if isinstance(value, bool) or not isinstance(value, int | float):
        return {}
    return {path: value}


def test_image_builds_from_the_dockerfile_and_runs_the_demo_to_its_summary(tmp_path):
    """Scenario: the Dockerfile built with buildah on a Debian bookworm base; then, in a
    container of that image, its own ENTRYPOINT (as its config records it, with its
    user, working directory and environment) with ``--max-events 3000 --no-http
    --summary summary.json``, as ``docker run IMAGE ...`` would run it.
    We expect: the build succeeds; the entry command is the Dockerfile's and runs as the
    unprivileged user; it prints the summary table and exits 0; its summary equals the
    same run of the package here (same counts, same scores to 1e-9)."""
    base = base_image()
    tag = f"localhost/streamweights-test:{os.getpid()}-{uuid.uuid4().hex[:8]}"
    began = time.monotonic()
    build = buildah("bud", "--isolation", "chroot", "--format", "docker", "--pull=false",
                    "--build-arg", f"PYTHON_IMAGE={base}", *host_trust_mounts(),
                    "--tag", tag, str(REPO), timeout=900)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    build_seconds = time.monotonic() - began
    try:
        config = json.loads(buildah("inspect", "--type", "image", tag).stdout)["OCIv1"]["config"]
        size = buildah("images", "--format", "{{.Size}}", tag).stdout.strip()
        print(f"image {tag}: {size}, built in {build_seconds:.0f} s on {base}")
        assert config["Entrypoint"] == final_stage().entrypoint
        assert config["User"] == final_stage().user
        container = buildah("from", "--pull=false", tag).stdout.strip()
        assert container, "buildah from failed"
        try:
            def inside(*argv: str) -> subprocess.CompletedProcess:
                return buildah("run", "--isolation", "chroot", container, "--", *argv)

            assert inside("id", "-u").stdout.strip() == final_stage().user.split(":")[0]
            began = time.monotonic()
            run = inside(*config["Entrypoint"], "--max-events", str(EVENTS), "--no-http",
                         "--summary", "summary.json")
            print(f"entry command in the image: {time.monotonic() - began:.1f} s")
            assert run.returncode == 0, run.stderr[-3000:]
            assert "adapted / raw best" in run.stdout, run.stdout[-2000:]
            shown = inside("cat", f"{config['WorkingDir']}/summary.json")
            assert shown.returncode == 0, shown.stderr
            in_image = json.loads(shown.stdout)
        finally:
            buildah("rm", container)
    finally:
        buildah("rmi", tag)

    here = tmp_path / "summary.json"
    reference = cli("run", "--config", str(DEMO_CONFIG), "--state-dir", str(tmp_path / "state"),
                    "--max-events", str(EVENTS), "--no-http", "--summary", str(here),
                    cwd=tmp_path)
    assert reference.returncode == 0, reference.stderr[-2000:]
    expected = json.loads(here.read_text())
    assert in_image["records"] == expected["records"] == EVENTS
    assert in_image["complete"] is expected["complete"] is False   # stopped by --max-events
    stream, wanted = in_image["streams"]["demo"], expected["streams"]["demo"]
    for field in ("models", "predictions", "labels", "pending", "weights_version"):
        assert stream[field] == wanted[field], field
    assert stream["predictions"] > 0 and stream["labels"] > 0
    got, want = _numbers(stream), _numbers(wanted)
    assert got.keys() == want.keys()
    for path, value in want.items():
        assert math.isfinite(got[path]), path
        assert got[path] == pytest.approx(value, rel=1e-9, abs=1e-12), path
