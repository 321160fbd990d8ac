"""``python -m lpntk``: the same as the ``lpntk`` command."""

import sys

from .cli import entry

sys.exit(entry())
