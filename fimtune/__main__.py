"""`python -m fimtune` runs the command line."""

import sys

from fimtune.cli import main

sys.exit(main())
