"""exchange: signed, audited dossier exchange between Vietnamese government agencies.

The public surface of the core, for agency integrations and tests.
"""

from exchange.codes import AgencyCode, DossierCode, ProcedureCode
from exchange.envelope import Header, Kind, VerifiedEnvelope
from exchange.errors import ExchangeError, InvalidEnvelope, InvalidInput
from exchange.sealing import Opener, Signer
from exchange.trust import TrustStore

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
