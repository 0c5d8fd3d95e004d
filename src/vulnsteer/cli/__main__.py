"""``python -m vulnsteer.cli``: the same as the ``vulnsteer`` command."""

import sys

from . import main

sys.exit(main())
