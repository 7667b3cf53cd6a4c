"""``python -m ava``: the same as the ``ava`` command."""

import sys

from ava.cli import main

sys.exit(main())
