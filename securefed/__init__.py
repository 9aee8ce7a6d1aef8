"""securefed: federated learning in which the coordinator learns only the sum."""

from typing import TYPE_CHECKING

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

_LAZY = {
    "Coordinator": "securefed.federation.coordinator",
    "Node": "securefed.federation.node",
    "load_model": "securefed.learning.export",
}


if TYPE_CHECKING:  # what the lazy attributes below are, for type checkers
    from securefed.federation.coordinator import Coordinator
    from securefed.federation.node import Node
    from securefed.learning.export import load_model


def __getattr__(name: str) -> object:
    """``securefed.Coordinator`` / ``securefed.Node`` / ``securefed.load_model`` without importing scikit-learn for every user."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'securefed' has no attribute {name!r}")


__all__ = [
    "Coordinator",
    "EncodingError",
    "InvalidParameter",
    "InvalidShare",
    "LocalProtocolError",
    "Node",
    "PrivacyBudgetExhausted",
    "ProtocolAborted",
    "ProtocolError",
    "RemoteProtocolError",
    "SecureFedError",
    "__version__",
    "load_model",
]
