"""One exception tree for everything securefed raises on purpose.

Callers can catch :class:`SecureFedError` to handle all of them. Checks on
input never use ``assert`` (asserts vanish under ``python -O``). Whose fault
an error is decides its class, because that decides what is done about it:

- **the caller's**: :class:`InvalidParameter` -- an argument or declared
  setting is unusable; :class:`ConfigError` (a config file) and
  :class:`DataError` (a data, model or key file the operator gave) are kinds
  of it. The message says what to change.
- **ours**: :class:`LocalProtocolError` -- securefed itself was misused (a
  call the current state does not allow); a bug, never blamed on a peer.
- **a peer's**: :class:`RemoteProtocolError` (with a ``reason`` code),
  :class:`InvalidShare` (a share or signature that does not verify) and
  :class:`EncodingError` for a sum no honest inputs could produce. Only these
  may get a peer's message dropped, a node excluded or a round aborted with
  culprits.
- **the machine's**: :class:`StorageError` -- a state file is damaged,
  locked, full or unwritable.
- **nobody's in particular**: :class:`ProtocolAborted` -- a round cannot go
  on (too few nodes, a deadline); :class:`PrivacyBudgetExhausted`.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "DataError",
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


class DataError(InvalidParameter):
    """A file the operator supplied cannot be used: a data file (CSV or .npz), a model file or a key file.

    The message names the file and what is wrong with it. A subclass of
    :class:`InvalidParameter`, since the file is the operator's input, like an
    argument; its own class lets tools tell "fix this file" from "fix this
    call". A securefed *state* file that is damaged is a :class:`StorageError`.
    """
