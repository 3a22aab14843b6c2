"""``python -m stamp_st``: the ``stamp-st`` command line."""

import sys

from .cli import main

sys.exit(main())
