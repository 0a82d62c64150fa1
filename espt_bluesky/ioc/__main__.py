"""``python -m espt_bluesky.ioc``: serve the simulated bench over Channel Access (see :mod:`espt_bluesky.ioc.cli`)."""

import sys

from .cli import main

sys.exit(main())
