"""`python -m semproxy` runs the command-line interface."""

import sys

from semproxy.cli import main

sys.exit(main())
