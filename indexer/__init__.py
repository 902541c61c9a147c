"""The write side: sources, git mirrors and diffs, the indexing service, the jobs.

Entry points, imported by module: ``indexer.service`` (:class:`~indexer.service.IndexService`:
diff -> chunk -> embed -> upsert/delete), ``indexer.jobs`` (one branch run, a reindex, a
removal), ``indexer.queue`` (how a push becomes a run: the dispatchers and Celery tasks).
"""

__all__: list[str] = []
