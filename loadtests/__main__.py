"""`python -m loadtests run ...` / `python -m loadtests report DIR` (see loadtests.cli)."""

import sys

from loadtests.cli import main

if __name__ == "__main__":
    sys.exit(main())
