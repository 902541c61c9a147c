"""embeddings stage of coderag: text -> vectors.

One facade (:class:`Embedder`: ``embed_documents`` / ``embed_queries`` / ``count_tokens``),
the backends behind it (torch, OpenVINO, ONNX Runtime, chosen and checked at load), a
content-addressed on-disk cache, and sparse lexical vectors for code. Imports nothing heavy:
torch and transformers load in :meth:`Embedder.warm_up`.
"""

from embeddings.cache import EmbeddingCache
from embeddings.facade import Embedder, EmbedStats
from embeddings.sparse import sparse_document, sparse_query, tokenize_code

__all__ = [
    "EmbedStats",
    "Embedder",
    "EmbeddingCache",
    "sparse_document",
    "sparse_query",
    "tokenize_code",
]
