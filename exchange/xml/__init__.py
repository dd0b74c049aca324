"""Untrusted XML made safe: the one hardened parser, the XSDs and validation, namespaces."""
