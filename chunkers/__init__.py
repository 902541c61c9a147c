"""chunkers stage of coderag."""
