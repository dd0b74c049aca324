"""exchange: signed, audited dossier exchange between Vietnamese government agencies.

The public surface of the core, for agency integrations and tests.
"""

from exchange.codes import AgencyCode, DossierCode, ProcedureCode
from exchange.envelope.model import Header, Kind, VerifiedEnvelope
from exchange.envelope.sealing import Opener, Signer
from exchange.envelope.trust import TrustStore
from exchange.errors import ExchangeError, InvalidEnvelope, InvalidInput

__version__ = "0.1.0"

__all__ = [
    "AgencyCode",
    "DossierCode",
    "ExchangeError",
    "Header",
    "InvalidEnvelope",
    "InvalidInput",
    "Kind",
    "Opener",
    "ProcedureCode",
    "Signer",
    "TrustStore",
    "VerifiedEnvelope",
    "__version__",
]
