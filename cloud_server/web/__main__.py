"""``python -m icmh.cloud.web``: the same as ``icmh-web``."""

import sys

from .cli import main

sys.exit(main())
