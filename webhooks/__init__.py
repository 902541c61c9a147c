"""webhooks stage of coderag."""
