"""The read side: query -> ranked chunks -> context.

Its public entry points are modules, imported by name: ``retriever.search`` (the
:class:`~retriever.search.Retriever`: hybrid search, fusion, priors), ``retriever.context``
(context assembly under a token budget), ``retriever.api`` (the search, context and Continue
routes), ``retriever.litellm_hook`` (the LiteLLM gateway hook) and ``retriever.litellm_auth``
(the gateway's check of a developer's OIDC token), both loaded by the gateway itself. The
package itself exports nothing, so importing one of them loads no other.
"""

__all__: list[str] = []
