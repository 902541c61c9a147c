"""Benchmarks: every ``coderag bench NAME`` command, each printing one JSON report.

One module per benchmark (``index``, ``embeddings``, ``vector_index``, ``secrets``, ``serve``,
``webhooks``, ``search_load``), what they share in :mod:`bench.support`, the command group in
:mod:`bench.cli`. A composition root like the CLI: it may import any stage, and no stage
imports it.
"""

__all__: list[str] = []
