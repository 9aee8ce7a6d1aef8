"""securefed: federated learning in which the coordinator learns only the sum."""

from securefed.errors import (
    EncodingError,
    InvalidParameter,
    InvalidShare,
    LocalProtocolError,
    PrivacyBudgetExhausted,
    ProtocolAborted,
    ProtocolError,
    RemoteProtocolError,
    SecureFedError,
)

__version__ = "0.1.0"

__all__ = [
    "EncodingError",
    "InvalidParameter",
    "InvalidShare",
    "LocalProtocolError",
    "PrivacyBudgetExhausted",
    "ProtocolAborted",
    "ProtocolError",
    "RemoteProtocolError",
    "SecureFedError",
    "__version__",
]
