"""`python -m adapt.report SWEEP_DIR` (see adapt.report)."""

import sys

from adapt.report.cli import main

sys.exit(main())
