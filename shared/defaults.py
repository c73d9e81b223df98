"""A setting's default read from the dataclass that declares it, so that a command line never restates one."""

from __future__ import annotations

import dataclasses
from typing import Any


def field_default(cls: type, name: str) -> Any:
    """The default of the dataclass field ``cls.name`` (``KeyError`` when it has none)."""
    found = {f.name: f for f in dataclasses.fields(cls)}[name]
    if found.default_factory is not dataclasses.MISSING:
        return found.default_factory()
    if found.default is dataclasses.MISSING:
        raise KeyError(f"{cls.__name__}.{name} has no default")
    return found.default
