"""GitLab events in: verify, spool durably, de-duplicate, hand to the dispatcher.

Entry points, imported by module: ``webhooks.routes`` (the webhook route), ``webhooks.spool``
(the durable spool and its forwarder), ``webhooks.gitlab_hooks`` (project hook registration,
python-gitlab). The dispatcher arrives through the app's state, so this stage imports nothing
of the indexer.
"""

__all__: list[str] = []
