"""``python -m vulnsteer``: the same as the ``vulnsteer`` command."""

import sys

from .cli import main

sys.exit(main())
