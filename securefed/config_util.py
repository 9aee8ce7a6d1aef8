"""Reading the daemons' TOML configs strictly, with plain, actionable errors.

Theory of operation. Each kind of config file (node, coordinator) has one
schema: a table of :class:`Section` objects, each a table of :class:`Key`
objects. :func:`load_config` reads the TOML and checks the *whole* file
against the schema before any value is used: an unknown section or key, a
value of the wrong type, a list with the wrong kind of items, a missing
required section or key are all :class:`~securefed.errors.ConfigError`\\ s
that name the file and the key, and, for a misspelt name, the nearest valid
one ("did you mean `max_epsilon`?"). A typo can therefore never switch a
site's limit off silently: ``max_epsion = 2.0`` is an error, not "no limit".

Loaders then read values through :class:`Table`, which knows the file and the
section, so the checks that need more than a type (ranges, key formats) raise
errors in the same form.
"""

from __future__ import annotations

import base64
import difflib
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from securefed.errors import ConfigError

__all__ = [
    "NUMBER",
    "ConfigFile",
    "Key",
    "Schema",
    "Section",
    "Table",
    "check_schema",
    "load_config",
    "load_toml",
    "nearest",
    "parse_identity_key",
    "resolve_path",
]

_MISSING = object()

#: A key that takes a number: an integer or a float (never a boolean).
NUMBER: tuple[type, ...] = (int, float)

_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false", list: "a list", dict: "a table"}


def _describe_kind(kind: tuple[type, ...]) -> str:
    if set(kind) == {int, float}:
        return "a number"
    return " or ".join(_TYPE_NAMES.get(k, k.__name__) for k in kind)


def _plural(kind: tuple[type, ...]) -> str:
    if set(kind) == {int, float}:
        return "numbers"
    return " or ".join({str: "strings", int: "integers", float: "numbers", bool: "booleans"}.get(k, k.__name__) for k in kind)


def _describe_value(value: Any) -> str:
    if isinstance(value, bool):
        return f"{str(value).lower()} (true/false)"
    if isinstance(value, str):
        return f"{value!r} (a string)"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, int):
        return f"{value} (an integer)"
    if isinstance(value, float):
        return f"{value!r} (a number)"
    return f"{value!r} ({type(value).__name__})"


def _is_kind(value: Any, kind: tuple[type, ...]) -> bool:
    if isinstance(value, bool):
        return bool in kind
    return isinstance(value, kind)


@dataclass(frozen=True)
class Key:
    """One key of a section: its type(s), whether it must be present, and for lists the items' type."""

    kind: type | tuple[type, ...]
    required: bool = False
    items: type | tuple[type, ...] | None = None
    help: str = ""

    @property
    def kinds(self) -> tuple[type, ...]:
        return self.kind if isinstance(self.kind, tuple) else (self.kind,)

    @property
    def item_kinds(self) -> tuple[type, ...] | None:
        if self.items is None:
            return None
        return self.items if isinstance(self.items, tuple) else (self.items,)


@dataclass(frozen=True)
class Section:
    """A ``[section]`` (or, with ``array``, a ``[[section]]`` list of tables) and its keys and sub-tables."""

    keys: Mapping[str, Key]
    required: bool = False
    array: bool = False
    tables: Mapping[str, Section] = field(default_factory=dict)
    help: str = ""

    def names(self) -> list[str]:
        return [*self.keys, *self.tables]


#: A file kind's schema: its top-level sections by name.
Schema = Mapping[str, Section]


def nearest(name: str, candidates: list[str] | tuple[str, ...]) -> str | None:
    """The candidate closest to ``name`` (a likely misspelling), or None if none is close."""
    lowered = {c.lower(): c for c in candidates}
    if name.lower() in lowered:
        return lowered[name.lower()]
    found = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    if not found:
        found = difflib.get_close_matches(name.lower(), list(lowered), n=1, cutoff=0.6)
        found = [lowered[f] for f in found]
    return found[0] if found else None


def _label(path: tuple[str, ...], array: bool = False, index: int | None = None) -> str:
    name = ".".join(path)
    if array:
        return f"[[{name}]] #{index}" if index is not None else f"[[{name}]]"
    return f"[{name}]"


@dataclass
class _Problem:
    message: str
    key: str | None
    suggestion: str | None


class _Checker:
    def __init__(self, file: Path | str | None, schema: Schema) -> None:
        self.file = file
        self.schema = schema
        self.problems: list[_Problem] = []

    def add(self, message: str, key: str | None = None, suggestion: str | None = None) -> None:
        self.problems.append(_Problem(message, key, suggestion))

    def _elsewhere(self, name: str, here: tuple[str, ...], table: bool) -> str | None:
        """Where ``name`` is valid outside ``here``: the section holding such a key (``table`` False), or the
        full name of such a sub-table (``table`` True); None unless there is exactly one."""
        homes = []

        def walk(path: tuple[str, ...], section: Section) -> None:
            if not table and path != here and name in section.keys:
                homes.append(_label(path, section.array))
            for sub, child in section.tables.items():
                if table and sub == name and path != here:
                    homes.append(_label((*path, sub), child.array))
                walk((*path, sub), child)

        for top, section in self.schema.items():
            walk((top,), section)
        return homes[0] if len(homes) == 1 else None

    def unknown(self, name: str, path: tuple[str, ...], section: Section | None, item: Any, where: str) -> None:
        """An unknown key or section ``name`` inside ``path`` (``section`` None: the top level)."""
        dotted = ".".join((*path, name))
        tables = list(self.schema) if section is None else list(section.tables)
        candidates = tables if section is None else section.names()
        what = "section" if section is None or isinstance(item, dict) else "key"
        guess = nearest(name, candidates)
        if guess is not None:
            shown = _label((*path, guess), self._is_array(path, guess)) if guess in tables else f"`{guess}`"
            self.add(f"{where} unknown {what} {name!r}; did you mean {shown}?".lstrip(), dotted, guess)
            return
        if what == "section" and (home := self._elsewhere(name, path, table=True)) is not None:
            self.add(f"{where} unknown section {name!r}; did you mean {home}?".lstrip(), dotted, home.strip("[]"))
            return
        if (home := self._elsewhere(name, path, table=False)) is not None:
            self.add(f"{where} unknown {what} {name!r}; it belongs in {home}".lstrip(), dotted, None)
            return
        valid = ", ".join(_label((*path, c), self._is_array(path, c)) if c in tables else c for c in candidates) or "none"
        self.add(f"{where} unknown {what} {name!r}; valid here: {valid}".lstrip(), dotted, None)

    def _is_array(self, path: tuple[str, ...], name: str) -> bool:
        tables: Mapping[str, Section] = self.schema
        for part in path:
            tables = tables[part].tables
        target = tables.get(name)
        return bool(target is not None and target.array)

    def check(self, raw: Mapping[str, Any]) -> None:
        tops = list(self.schema)
        for name, value in raw.items():
            if name not in self.schema:
                if isinstance(value, (dict, list)):
                    self.unknown(name, (), None, value, "")
                else:
                    home = self._elsewhere(name, (), table=False)
                    hint = (
                        f"; it belongs in {home}"
                        if home
                        else f"; put it in one of the sections {', '.join(f'[{t}]' for t in tops)}"
                    )
                    self.add(f"key {name!r} is outside any section{hint}", name, None)
                continue
            self.section((name,), self.schema[name], value)
        for name, section in self.schema.items():
            if section.required and name not in raw:
                shown = _label((name,), section.array)
                self.add(f"the required section {shown} is missing", name, None)

    def section(self, path: tuple[str, ...], section: Section, value: Any) -> None:
        if section.array:
            if isinstance(value, dict):
                self.add(f"{_label(path)} must be written {_label(path, True)}: a list of tables, one per entry", ".".join(path))
                return
            if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
                self.add(f"{_label(path, True)} must be a list of tables", ".".join(path))
                return
            if section.required and not value:
                self.add(f"{_label(path, True)} needs at least one entry", ".".join(path))
            for index, entry in enumerate(value, start=1):
                self.table(path, section, entry, _label(path, True, index))
            return
        if not isinstance(value, dict):
            what = "a list of tables" if isinstance(value, list) else _describe_value(value)
            self.add(f"{_label(path)} must be a table (a section), got {what}", ".".join(path))
            return
        self.table(path, section, value, _label(path))

    def table(self, path: tuple[str, ...], section: Section, value: Mapping[str, Any], where: str) -> None:
        for name, item in value.items():
            dotted = ".".join((*path, name))
            if name in section.tables:
                self.section((*path, name), section.tables[name], item)
                continue
            key = section.keys.get(name)
            if key is None:
                self.unknown(name, path, section, item, where)
                continue
            if not _is_kind(item, key.kinds):
                self.add(f"{where} {name} must be {_describe_kind(key.kinds)}, got {_describe_value(item)}", dotted)
                continue
            items = key.item_kinds
            if items is not None and isinstance(item, list):
                bad = [v for v in item if not _is_kind(v, items)]
                if bad:
                    self.add(f"{where} {name} must be a list of {_plural(items)}, got {_describe_value(bad[0])} in it", dotted)
        for name, key in section.keys.items():
            if key.required and name not in value:
                self.add(f"{where} lacks the required key {name!r}", ".".join((*path, name)))
        for name, sub in section.tables.items():
            if sub.required and name not in value:
                self.add(f"the required section {_label((*path, name), sub.array)} is missing", ".".join((*path, name)))

    def raise_if_any(self) -> None:
        if not self.problems:
            return
        first = self.problems[0]
        prefix = f"{self.file}: " if self.file is not None else ""
        lines = [prefix + first.message.strip()]
        for other in self.problems[1:6]:
            lines.append(f"  also: {other.message.strip()}")
        if len(self.problems) > 6:
            lines.append(f"  ... and {len(self.problems) - 6} more")
        raise ConfigError("\n".join(lines), self.file, first.key, first.suggestion)


def check_schema(raw: Mapping[str, Any], schema: Schema, file: Path | str | None = None) -> None:
    """Raise :class:`ConfigError` for everything in ``raw`` that ``schema`` does not allow (all at once)."""
    checker = _Checker(file, schema)
    checker.check(raw)
    checker.raise_if_any()


def load_toml(path: str | Path) -> dict[str, Any]:
    file = Path(path)
    try:
        with file.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"config file {file} does not exist", file) from None
    except IsADirectoryError:
        raise ConfigError(f"config file {file} is a folder, not a file", file) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {file} is not valid TOML: {exc}", file) from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {file} is not UTF-8 text", file) from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {file}: {exc.strerror}", file) from None


class Table:
    """One section of a checked config (or one entry of a ``[[list]]``), read with errors that name the file."""

    def __init__(self, file: Path | str | None, where: str, data: Mapping[str, Any], path: str) -> None:
        self.file = file
        self.where = where
        self.data = data
        self.path = path

    def __contains__(self, key: str) -> bool:
        return key in self.data

    def get(self, key: str, default: Any = _MISSING) -> Any:
        """The value (its type was checked against the schema); ``default`` when absent."""
        if key in self.data:
            return self.data[key]
        if default is _MISSING:
            raise self.error(key, "lacks this required key")
        return default

    def sub(self, name: str) -> Table | None:
        """A sub-table such as ``[task.dp]``, or None if the file has none."""
        if name not in self.data:
            return None
        return Table(self.file, f"[{self.path}.{name}]", self.data[name], f"{self.path}.{name}")

    def error(self, key: str | None, message: str) -> ConfigError:
        """A :class:`ConfigError` about ``key`` in this section: "FILE: [section] key message"."""
        prefix = f"{self.file}: " if self.file is not None else ""
        subject = f"{self.where} {key}" if key else self.where
        return ConfigError(f"{prefix}{subject} {message}", self.file, f"{self.path}.{key}" if key else self.path)


class ConfigFile:
    """A config file read and checked against its schema; hands out :class:`Table`\\ s."""

    def __init__(self, file: Path, raw: Mapping[str, Any], schema: Schema) -> None:
        self.file = file
        self.raw = raw
        self.schema = schema

    @property
    def base(self) -> Path:
        """Relative paths in a config are relative to the config file's folder."""
        return self.file.parent

    def table(self, name: str) -> Table:
        """A section (an empty table when an optional section is absent)."""
        return Table(self.file, f"[{name}]", self.raw.get(name, {}), name)

    def entries(self, name: str) -> Iterator[Table]:
        """The tables of a ``[[name]]`` list."""
        for index, entry in enumerate(self.raw.get(name, []), start=1):
            yield Table(self.file, f"[[{name}]] #{index}", entry, name)

    def error(self, message: str, key: str | None = None) -> ConfigError:
        return ConfigError(f"{self.file}: {message}", self.file, key)


def load_config(path: str | Path, schema: Schema) -> ConfigFile:
    """Read a TOML config and check it against ``schema``; raises :class:`ConfigError`."""
    file = Path(path).expanduser().resolve()
    raw = load_toml(file)
    check_schema(raw, schema, file)
    return ConfigFile(file, raw, schema)


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
        raise ConfigError(f"{where}: identity_public_key must be 32 bytes in base64 (as printed by securefed keygen)")
    return raw
