"""``exchange demo`` and sample dossiers: built on the core, apart from it."""
