"""Where the data root (the ``../shared`` folder: data/, models/, papers/) is, decided in one place.

Order: the ``ICMH_DATA`` environment variable; else, in a source checkout (``pyproject.toml`` next to the
package folders), the ``shared`` folder beside the checkout; else ``../shared`` from the working directory.
Every tool's ``--shared`` / ``--detector`` default comes from here, so an installed (non-editable) package
never looks inside site-packages for data.
"""

from __future__ import annotations

import os
from pathlib import Path

DATA_ENV = "ICMH_DATA"
_CHECKOUT = Path(__file__).resolve().parent.parent


def data_root() -> Path:
    """The data root as described in the module docstring (it need not exist)."""
    configured = os.environ.get(DATA_ENV)
    if configured:
        return Path(configured)
    if (_CHECKOUT / "pyproject.toml").is_file():
        return _CHECKOUT.parent / "shared"
    return Path.cwd().parent / "shared"


def default_detector() -> Path:
    """The YOLO checkpoint under the data root (``models/yolov8n.pt``)."""
    return data_root() / "models" / "yolov8n.pt"
