"""Each dialect's request and response types."""
