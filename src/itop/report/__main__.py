"""`python -m itop.report RUN_DIR ...`: the report without the `itop` entry point."""

import sys

from .cli import main

sys.exit(main())
