"""Package attributes imported on first use (PEP 562's module ``__getattr__``), for the subpackages' ``__init__``.

A package that re-exports its modules' names would import all of them (and their heavy dependencies) with
itself; with :func:`lazy_names` each name is imported when first read, then kept in the package's namespace.
Lowest floor of the package (imports nothing of it).

Examples:
    >>> namespace = {}
    >>> getattr_, dir_ = lazy_names("demo", {"sqrt": "math"}, namespace)
    >>> getattr_("sqrt")(4.0), "sqrt" in namespace, dir_()
    (2.0, True, ['sqrt'])
"""
from __future__ import annotations

import importlib
from typing import Any, Callable

__all__ = ["lazy_names"]


def lazy_names(package: str, table: dict[str, str], namespace: dict[str, Any]) -> tuple[Callable, Callable]:
    """``(__getattr__, __dir__)`` for ``package``: ``table`` maps each name to the module that defines it;
    a name read once is stored in ``namespace`` (the package's ``globals()``), so the next read is plain."""

    def __getattr__(name: str) -> Any:
        if name not in table:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(table[name]), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(table))

    return __getattr__, __dir__
