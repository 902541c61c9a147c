"""evals stage of coderag."""
