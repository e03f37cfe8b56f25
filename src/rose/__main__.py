"""`python -m rose` (also what torchrun launches: `torchrun ... -m rose run CONFIG`)."""

import sys

from .cli import main

sys.exit(main())
