"""`python -m kcv ...` runs the `kcv` command (see `kcv.cli`)."""

import sys

from kcv.cli import main

sys.exit(main())
