"""coderag: self-hosted code retrieval for Continue and LiteLLM, fed by GitLab webhooks."""

__version__ = "0.1.0"

__all__ = ["__version__"]
