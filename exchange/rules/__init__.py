"""Routing rules: the model, the working calendar, loading and checking, the tools administrators run."""
