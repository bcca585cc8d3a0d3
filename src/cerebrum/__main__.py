"""`python -m cerebrum`: the same as the `cerebrum` command."""

import sys

from cerebrum.cli import main

sys.exit(main())
