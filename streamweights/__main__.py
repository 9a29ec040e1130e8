"""``python -m streamweights`` = the ``streamweights`` command."""

import sys

from streamweights.cli import main

sys.exit(main())
