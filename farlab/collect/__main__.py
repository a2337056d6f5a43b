"""``python -m farlab.collect``: see :mod:`farlab.collect.cli`."""

import sys

from farlab.collect.cli import main

sys.exit(main())
