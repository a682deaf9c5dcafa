"""``python -m efficientft.cli``: the ``eft`` command (tests and ``accelerate launch -m`` start it this way)."""

import sys

from . import main

sys.exit(main())
