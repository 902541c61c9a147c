"""One index, one precision: vectors of a model in bf16 and in fp32 are never mixed.

A point's vector is written by whichever worker indexed it last, so a fleet whose workers run
a model in two precisions (a new CPU with native bf16 beside old ones, a GPU worker in fp16)
would leave an index whose vectors differ by worker. The branch states already record each
branch's fingerprint, which names the model and its precision (``~bf16``); this module reads
them, so the runtime can *align* a process on ``auto`` to the index's precision and the
indexer can *refuse*, with the remedy in the message, a process whose precision was set to
something else.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import TYPE_CHECKING

from coderag.errors import ConfigError
from coderag.index.payload import branch_state_prefix
from embeddings.backends.precision import strip_precision_tag

if TYPE_CHECKING:
    from coderag.index.base import VectorIndex

__all__ = ["aligned_precision", "check_precision", "stored_precision", "stored_precisions"]

log = logging.getLogger(__name__)


def _model_of(fingerprint: str) -> tuple[str, str]:
    """``(model id without tag, precision)`` of a branch fingerprint ``v<n>:<model id>:...``."""
    parts = fingerprint.split(":")
    model = parts[1] if len(parts) > 1 else ""
    return strip_precision_tag(model)


def stored_precisions(index: VectorIndex, base_id: str) -> Counter[str]:
    """Branches of ``base_id`` (the model without its precision tag) by stored precision."""
    out: Counter[str] = Counter()
    for state in index.list_state(branch_state_prefix()).values():
        model, precision = _model_of(str(state.get("fingerprint", "")))
        if model == base_id:
            out[precision] += 1
    return out


def stored_precision(index: VectorIndex, base_id: str) -> str | None:
    """The precision most of the index's branches of this model hold (None: none yet)."""
    counts = stored_precisions(index, base_id)
    return counts.most_common(1)[0][0] if counts else None


def aligned_precision(index: VectorIndex, base_id: str) -> str | None:
    """:func:`stored_precision` for aligning a process under ``auto``, or None when the
    index cannot be read now (an embedded index open in another handle, a server down):
    the process then plans as if the index were new, and :func:`check_precision` still
    guards every write."""
    try:
        return stored_precision(index, base_id)
    except Exception as exc:  # reading is a courtesy here; the write path checks for real
        log.debug("precision of the index not read (%s): not aligning", exc)
        return None


def check_precision(index: VectorIndex, base_id: str, precision: str) -> None:
    """Refuse to write ``precision`` vectors into an index holding this model in another."""
    counts = stored_precisions(index, base_id)
    others = {p: n for p, n in counts.items() if p != precision}
    if not others:
        return
    held = ", ".join(f"{n} branch(es) in {p}" for p, n in sorted(others.items()))
    raise ConfigError(
        f"this index holds {base_id} vectors as {held}; this process embeds in {precision}. "
        f"Vectors of two precisions are never mixed: set CODERAG_EMBEDDING_PRECISION to "
        f"{max(others, key=lambda p: others[p])} (or auto) on every worker, or move the index to "
        f"{precision} with `coderag models add <path> --precision {precision}`, "
        f"`coderag models build` and `coderag models switch`"
    )
