"""The province's configuration bundle: rules, CA certificates and CRL, signed by its authority."""
