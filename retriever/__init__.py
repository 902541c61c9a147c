"""The read side: query -> ranked chunks -> context.

Its public entry points are modules, imported by name: ``retriever.search`` (the
:class:`~retriever.search.Retriever`: hybrid search, fusion, priors), ``retriever.context``
(context assembly under a token budget), ``retriever.api`` (the search, context and Continue
routes) and ``retriever.litellm_hook`` (the LiteLLM gateway hook, loaded by the gateway
itself). The package itself exports nothing, so importing one of them loads no other.
"""

__all__: list[str] = []
