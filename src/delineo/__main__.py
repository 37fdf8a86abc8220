"""``python -m delineo ...``: the same as the ``delineo`` command."""

import sys

from delineo.cli import main

sys.exit(main())
