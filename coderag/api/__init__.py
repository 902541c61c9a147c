"""The HTTP API: the app factory and the pieces every router shares.

:func:`create_app` is exported lazily: importing :mod:`coderag.api.errors` (what a stage's
router needs to document its errors) must not import the factory, which imports every
router and the indexer's dispatcher.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from coderag.api.app import create_app

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from coderag.api.app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
