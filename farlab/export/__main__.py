import sys

from farlab.export.cli import main

sys.exit(main())
