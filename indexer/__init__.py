"""indexer stage of coderag."""
