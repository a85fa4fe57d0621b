"""`python -m cli`: the same as the `sptelab` console script."""

import sys

from cli.main import main

sys.exit(main())
