"""``python -m sandcastle.cli``."""

import sys

from sandcastle.cli import main

if __name__ == "__main__":  # importing the module (a walk over the package's modules) runs nothing
    sys.exit(main())
