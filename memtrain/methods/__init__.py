"""Training methods and their registry. `METHODS[name]` is the class behind `method=name`; a method
from outside the package joins with `register(cls)` (its settings then come from `method_args`)."""
from __future__ import annotations

from .base import Method
from .bptt import BPTT
from .dmt import DMT
from .smt import SMT
from .smt_dmt import SMTDMT

METHODS: dict[str, type[Method]] = {
    "smt": SMT,
    "dmt": DMT,
    "bptt": BPTT,
    "smt-dmt": SMTDMT,
}


def register(cls: type[Method]) -> type[Method]:
    """Add a Method subclass to the registry under `cls.name` (usable as a class decorator)."""
    if not (isinstance(cls, type) and issubclass(cls, Method)) or not cls.name:
        raise ValueError(f"register() takes a Method subclass with a name, got {cls!r}")
    METHODS[cls.name] = cls
    return cls


def method_class(name: str) -> type[Method]:
    if name not in METHODS:
        raise ValueError(f"method must be one of {sorted(METHODS)}, got {name!r}")
    return METHODS[name]
