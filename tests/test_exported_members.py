"""Each package's ``__init__`` says what it exports, and says all of it.

For every top-level package (and the sub-packages that other stages import from), the
package's ``__all__`` names only things that exist (lazy exports included: reading them
imports them), and every public name the ``__init__`` defines or re-exports is listed in
``__all__``. Names an ``__init__`` only uses (submodules, ``from __future__`` features,
``TYPE_CHECKING``, typing helpers and other libraries' objects) are not exports.

This pins no module layout: a package may move code between its submodules freely, as long
as what its ``__init__`` offers stays declared.
"""

from __future__ import annotations
import __future__

import importlib
import inspect
import types
from typing import Any

import pytest

PACKAGES = [
    "coderag",
    "coderag.api",
    "coderag.cli",
    "coderag.index",
    "indexer",
    "indexer.queue",
    "retriever",
    "chunkers",
    "embeddings",
    "webhooks",
    "evals",
    "bench",
]

_FUTURE_FEATURE = type(__future__.annotations)
NOT_EXPORTS = frozenset({"TYPE_CHECKING"})
"""Public-looking names an ``__init__`` uses for itself, never as an export."""


def _is_foreign(value: Any, top: str) -> bool:
    """Whether ``value`` is something the package merely uses: a module, a ``__future__``
    feature, a typing construct, or a class/function defined outside ``top`` (the package's
    top-level package). Any other value (a constant, an instance) counts as the package's."""
    if isinstance(value, types.ModuleType | _FUTURE_FEATURE):
        return True
    if inspect.isclass(value) or inspect.isroutine(value):
        return str(getattr(value, "__module__", "")).split(".", 1)[0] != top
    return type(value).__module__ == "typing"


def _public_names(mod: types.ModuleType) -> set[str]:
    top = mod.__name__.split(".", 1)[0]
    return {
        name
        for name, value in vars(mod).items()
        if not name.startswith("_") and name not in NOT_EXPORTS and not _is_foreign(value, top)
    }


@pytest.mark.parametrize("package", PACKAGES)
def test_all_names_exist(package: str) -> None:
    mod = importlib.import_module(package)
    assert hasattr(mod, "__all__"), f"{package.replace('.', '/')}/__init__.py has no __all__"
    exported = list(mod.__all__)
    assert len(exported) == len(set(exported)), f"{package}.__all__ lists a name twice"
    missing = [name for name in exported if not hasattr(mod, name)]
    assert missing == [], f"{package}.__all__ names what does not exist: {missing}"


@pytest.mark.parametrize("package", PACKAGES)
def test_all_public_names_are_exported(package: str) -> None:
    mod = importlib.import_module(package)
    undeclared = sorted(_public_names(mod) - set(getattr(mod, "__all__", ())))
    assert undeclared == [], f"{package} defines public names missing from __all__: {undeclared}"
