"""Signed envelopes: the model, dossiers, receipts and statuses, the PKI, trust, seal and open."""
