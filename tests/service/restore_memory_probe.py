"""Run by tests/service/test_heap_streams.py in a fresh interpreter (a heap no other
test has grown): ``python restore_memory_probe.py CONFIG [--keep-freed-pages]`` builds
the service of CONFIG and restores its state folder, then asks glibc once more to give
freed heap pages back. Prints JSON: the streams restored, and how much resident memory
that last trim released (with ``--keep-freed-pages`` the restore's own trim is left
out, the control: what a restore leaves behind without it)."""

from __future__ import annotations

import json
import sys

import streamweights.runtime.service as service_module
from streamweights.config import load_config
from streamweights.runtime.heap import return_freed_pages
from streamweights.runtime.service import Service
from tests.process_memory import resident_bytes


def main(config_path: str, keep_freed_pages: bool) -> None:
    if keep_freed_pages:
        service_module.return_freed_pages = lambda: False
    service = Service(load_config(config_path))
    try:
        service.restore()
        restored = sum(stream.labels > 0
                       for stream in service.pipeline.streams.values())
        before = resident_bytes()
        return_freed_pages()  # (heap's own: the control patches only the service's)
        released = before - resident_bytes()
    finally:
        service.close()
    print(json.dumps({"restored": restored, "released": released}))


if __name__ == "__main__":
    main(sys.argv[1], "--keep-freed-pages" in sys.argv[2:])
