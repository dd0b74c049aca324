"""One agency's node: its configuration and context, the workflow, and the daemon that runs it."""
