"""``python -m xfit.cli``: the same as the ``xfit`` command."""

import sys

from xfit.cli import main

sys.exit(main())
