"""``python -m cloud_server.web``: the same as ``icmh-web``."""

import sys

from .cli import main

sys.exit(main())
