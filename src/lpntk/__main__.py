"""``python -m lpntk``: the same as the ``lpntk`` command."""

import sys

from .cli import main

sys.exit(main())
