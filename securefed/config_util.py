"""Small helpers for reading the daemons' TOML configs with plain, actionable errors."""

from __future__ import annotations

import base64
import tomllib
from pathlib import Path
from typing import Any

from securefed.errors import InvalidParameter

__all__ = ["load_toml", "section", "field", "resolve_path", "parse_identity_key"]

_MISSING = object()


def load_toml(path: str | Path) -> dict[str, Any]:
    file = Path(path)
    try:
        with file.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise InvalidParameter(f"config file {file} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise InvalidParameter(f"config file {file} is not valid TOML: {exc}") from None
    except OSError as exc:
        raise InvalidParameter(f"cannot read config file {file}: {exc.strerror}") from None


def section(config: dict[str, Any], name: str, required: bool = True) -> dict[str, Any]:
    value = config.get(name, _MISSING)
    if value is _MISSING:
        if required:
            raise InvalidParameter(f"config lacks the [{name}] section")
        return {}
    if not isinstance(value, dict):
        raise InvalidParameter(f"[{name}] must be a table")
    return value


def field(table: dict[str, Any], where: str, name: str, kind: type | tuple[type, ...], default: Any = _MISSING) -> Any:
    """``table[name]`` checked against ``kind``; a clear error names the section and key."""
    if name not in table:
        if default is _MISSING:
            raise InvalidParameter(f"config [{where}] lacks {name!r}")
        return default
    value = table[name]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:
        raise InvalidParameter(f"config [{where}] {name} must be {' or '.join(k.__name__ for k in kinds)}")
    if not isinstance(value, kinds):
        raise InvalidParameter(f"config [{where}] {name} must be {' or '.join(k.__name__ for k in kinds)}, got {value!r}")
    return value


def resolve_path(base: Path, value: str) -> Path:
    """Paths in a config are relative to the config file's folder."""
    path = Path(value).expanduser()
    return path if path.is_absolute() else (base / path)


def parse_identity_key(text: str, where: str) -> bytes:
    """A raw Ed25519 public key from its base64 form in a config (as ``securefed keygen`` prints it)."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (ValueError, TypeError):
        raw = b""
    if len(raw) != 32:
        raise InvalidParameter(f"{where}: identity_public_key must be 32 bytes in base64 (as printed by securefed keygen)")
    return raw
