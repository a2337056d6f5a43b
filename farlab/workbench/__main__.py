import sys

from farlab.workbench.cli import main

sys.exit(main())
