"""Container entry point: ``python services/streamweights_service.py``.

Runs ``streamweights run`` with the config named by ``STREAMWEIGHTS_CONFIG`` (default
``/etc/streamweights/config.yaml``) as PID 1; SIGTERM checkpoints and exits 0.
"""

import os
import sys

from streamweights.cli import main

if __name__ == "__main__":
    config = os.environ.get("STREAMWEIGHTS_CONFIG", "/etc/streamweights/config.yaml")
    sys.exit(main(["run", "--config", config, *sys.argv[1:]]))
