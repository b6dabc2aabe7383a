"""``python -m sandcastle.cli``."""

import sys

from sandcastle.cli import main

sys.exit(main())
