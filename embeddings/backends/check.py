"""Checking a backend: probe texts and the cosine a backend must keep against torch fp32.

"The same vectors" is a property of a particular toolchain version, not a law, so every
exported model is compared with torch on these probes when it is exported and again, cheaply,
each time it loads. Read :data:`MIN_COSINE` through this module (``check.MIN_COSINE``) so a
test can tighten it in one place.
"""

from __future__ import annotations

import numpy as np

from embeddings.backends.encode import normalize

__all__ = ["MIN_COSINE", "PROBE_TEXTS", "min_cosine", "min_cosine_for"]

MIN_COSINE = 0.999
"""Lowest cosine between a backend's vector and torch fp32's on any probe text (fp32, and the
half precisions: bf16 keeps about 0.99997)."""
MIN_COSINE_INT8 = 0.98
"""int8 keeps about 0.99 on code by nature; whether that is good enough for retrieval is
measured by ``coderag bench precision`` (CoSQA MRR), not by this floor, which only catches a
broken quantisation."""


def min_cosine_for(precision: str) -> float:
    """The probe floor of ``precision``: :data:`MIN_COSINE`, or the int8 floor."""
    return MIN_COSINE_INT8 if precision == "int8" else MIN_COSINE


PROBE_TEXTS: tuple[str, ...] = (
    "def parse_config(path: str) -> dict:\n    with open(path) as fh:\n"
    "        return json.load(fh)",
    "how do I retry a failed HTTP request with exponential backoff?",
    "class LRUCache:\n    def __init__(self, capacity):\n        self.capacity = capacity\n"
    "        self.data = OrderedDict()\n\n    def get(self, key):\n        if key not in self.data:"
    "\n            return -1\n        self.data.move_to_end(key)\n        return self.data[key]",
    "SELECT id, name FROM users WHERE created_at > NOW() - INTERVAL '7 days';",
    "x",
    # Longer than any usual max_seq_length: exercises truncation, and padding in the batch.
    "\n".join(
        f"    result_{i} = compute_value(input_{i}, factor={i}) + offset  # step {i}"
        for i in range(60)
    ),
    "Fehlerbehandlung für ungültige Eingaben — 错误处理 — обработка ошибок",
)
"""Code, natural language, SQL, a one-character text, an over-long text, non-ASCII."""


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Lowest row-wise cosine between two batches of vectors."""
    return float(np.min(np.sum(normalize(a) * normalize(b), axis=1)))
