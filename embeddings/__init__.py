"""embeddings stage of coderag."""
