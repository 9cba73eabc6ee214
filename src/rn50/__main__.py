"""`python -m rn50` (what torchrun launches) runs the command line."""

import sys

from rn50.cli import main

sys.exit(main())
