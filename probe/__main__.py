"""``python -m probe`` runs the ``probe`` command line."""

import sys

from probe.cli import main

sys.exit(main())
