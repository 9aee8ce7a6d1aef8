"""One exception tree for everything securefed raises on purpose.

Callers can catch :class:`SecureFedError` to handle all of them. Checks on
input never use ``assert`` (asserts vanish under ``python -O``).
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "EncodingError",
    "InvalidParameter",
    "InvalidShare",
    "LocalProtocolError",
    "PrivacyBudgetExhausted",
    "ProtocolAborted",
    "ProtocolError",
    "RemoteProtocolError",
    "SecureFedError",
    "StorageError",
]


class SecureFedError(Exception):
    """Root of every error securefed raises deliberately."""


class InvalidParameter(SecureFedError, ValueError):
    """A configuration or argument is unusable; raised at construction time."""


class EncodingError(SecureFedError, ValueError):
    """A value cannot be encoded: non-finite, out of range, or would overflow."""


class ProtocolError(SecureFedError):
    """Something broke the rules of the secure-aggregation protocol."""


class LocalProtocolError(ProtocolError):
    """We were misused: a call that the current state does not allow."""


class RemoteProtocolError(ProtocolError):
    """A peer misbehaved. ``reason`` is a short code that is safe to log."""

    def __init__(self, message: str, reason: str = "protocol-violation") -> None:
        super().__init__(message)
        self.reason = reason


class ProtocolAborted(SecureFedError):
    """The round cannot go on; the message names the stage and the shortfall.

    ``culprits`` names the participants (round ids) whose provable misbehaviour
    caused the abort (an identifiable abort): a retry should leave them out.
    It is empty when the abort is nobody's provable fault (e.g. dropouts).
    """

    def __init__(
        self,
        message: str,
        stage: str | None = None,
        shortfall: int | None = None,
        culprits: tuple[int, ...] = (),
    ) -> None:
        super().__init__(message)
        self.stage = stage
        self.shortfall = shortfall
        self.culprits = tuple(culprits)


class InvalidShare(SecureFedError):
    """A share, ciphertext or signature failed to verify.

    Deliberately opaque: which check failed is not revealed.
    """


class StorageError(SecureFedError):
    """A store (SQLite file, state folder) could not be read or written: damaged, locked, full or in use.

    The message names the file and says what to do. No raw ``sqlite3`` exception
    leaves a store object; this is what callers catch instead.
    """


class PrivacyBudgetExhausted(SecureFedError):
    """Taking part would spend more privacy budget than the site allows."""


class ConfigError(InvalidParameter):
    """A config file is wrong. The message names the file, the key and, for a misspelt key, the nearest valid one.

    ``file`` is the config's path (None when not read from a file), ``key`` the
    dotted key at fault (e.g. ``"policy.max_epsion"``), ``suggestion`` the
    nearest valid key, if any.
    """

    def __init__(self, message: str, file: object = None, key: str | None = None, suggestion: str | None = None) -> None:
        super().__init__(message)
        self.file = file
        self.key = key
        self.suggestion = suggestion
