"""``python -m lpntk.cli``: the ``lpntk`` command."""

import sys

from . import entry

sys.exit(entry())
