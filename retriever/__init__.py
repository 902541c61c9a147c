"""retriever stage of coderag."""
