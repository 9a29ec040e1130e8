"""The container image's entry command as the Dockerfile writes it, run here.

No Docker engine runs in CI, so the tests run the final stage's ENTRYPOINT with the
stage's ENV, WORKDIR and files mapped back to where they come from: each ``COPY src
dest`` maps ``dest`` to the repository's ``src``, and ``/opt/venv`` (copied from the build
stage) to the virtualenv running the tests, where the package is installed the same way.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
from dataclasses import dataclass

import dockerfile

from tests.deploy.tools import REPO

DOCKERFILE = REPO / "Dockerfile"


@dataclass
class FinalStage:
    entrypoint: list[str]
    env: dict[str, str]
    workdir: str
    user: str
    copies: dict[str, str]          # image path -> path here
    runs: list[str]
    stages: int

    def local(self, value: str) -> str:
        """An image path (or a PATH-like list of them) as the path here."""
        for image_path, here in sorted(self.copies.items(), key=lambda item: -len(item[0])):
            if value == image_path or value.startswith(image_path.rstrip("/") + "/"):
                return here.rstrip("/") + value[len(image_path.rstrip("/")):]
        return value


def final_stage() -> FinalStage:
    commands = dockerfile.parse_file(str(DOCKERFILE))
    stages = sum(1 for c in commands if c.cmd == "FROM")
    last_from = max(i for i, c in enumerate(commands) if c.cmd == "FROM")
    stage = FinalStage([], {}, "/", "root", {}, [], stages)
    for command in commands[last_from + 1:]:
        if command.cmd == "ENTRYPOINT":
            assert command.json, "ENTRYPOINT must be the exec (JSON) form: the service is PID 1"
            stage.entrypoint = list(command.value)
        elif command.cmd == "ENV":
            pairs = command.value
            stage.env.update(zip(pairs[::2], pairs[1::2], strict=True))
        elif command.cmd == "WORKDIR":
            stage.workdir = command.value[0]
        elif command.cmd == "USER":
            stage.user = command.value[0]
        elif command.cmd == "RUN":
            stage.runs.append(command.value[0])
        elif command.cmd == "COPY":
            *sources, destination = command.value
            if any(flag.startswith("--from=") for flag in command.flags):
                stage.copies[destination] = sys.prefix     # the build stage's virtualenv
            else:
                (source,) = sources
                stage.copies[destination] = str(REPO / source)
    return stage


def start_entry_command(stage: FinalStage, workdir: pathlib.Path, *args: str,
                        env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start the image's ENTRYPOINT (plus ``args``, as ``docker run IMAGE ARGS`` would)
    in ``workdir`` (standing in for WORKDIR) with the image's environment."""
    # The host's environment underneath, as a container on this machine would see the
    # same CPU: OpenBLAS picks its kernel by CPU (or OPENBLAS_CORETYPE), and a different
    # kernel rounds differently, so bit-exact comparisons need the same one.
    environment = {**os.environ, "HOME": str(workdir)}
    for name, value in stage.env.items():
        if name == "PATH":
            value = ":".join(stage.local(part) for part in
                             value.replace("$PATH", os.environ["PATH"]).split(":"))
        else:
            value = stage.local(value)
        environment[name] = value
    environment.update(env or {})
    argv = [stage.local(part) for part in stage.entrypoint] + list(args)
    return subprocess.Popen(argv, cwd=workdir, env=environment, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
