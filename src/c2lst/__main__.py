"""``python -m c2lst``: the same command line as ``c2lst``."""

import sys

from ._cli import main

sys.exit(main())
