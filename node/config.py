"""The node's TOML config: coordinator endpoint and key, own keys, data, policy, roster.

See docs/deployment.md for a complete, commented example.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from securefed.config_util import field, load_toml, parse_identity_key, resolve_path, section
from securefed.errors import InvalidParameter
from securefed.federation.node import NodePolicy
from securefed.wire.keys import parse_public_key

__all__ = ["NodeConfig", "load_node_config"]


@dataclass(frozen=True)
class NodeConfig:
    name: str
    task: str
    features: int | tuple[str, ...]
    classes: tuple[int, ...]
    coordinator: str
    coordinator_curve_public_key: bytes
    curve_secret_key_file: Path
    identity_key_file: Path
    state_dir: Path
    data_path: Path
    label_column: str
    validation_fraction: float
    policy: NodePolicy
    roster: dict[str, bytes]

    @property
    def state_path(self) -> Path:
        return self.state_dir / "node.sqlite"

    @property
    def ledger_path(self) -> Path:
        return self.state_dir / "ledger.sqlite"

    @property
    def audit_path(self) -> Path:
        return self.state_dir / "audit.log"


def load_node_config(path: str | Path) -> NodeConfig:
    file = Path(path).resolve()
    raw = load_toml(file)
    base = file.parent
    main = section(raw, "node")
    task = section(raw, "task")
    data = section(raw, "data")
    features = field(task, "task", "features", (int, list))
    if isinstance(features, list) and not all(isinstance(f, str) for f in features):
        raise InvalidParameter("[task] features is a count or a list of column names")
    classes = field(task, "task", "classes", list)
    if not classes or not all(type(c) is int for c in classes):
        raise InvalidParameter("[task] classes must be a non-empty list of integers")
    policy_table = section(raw, "policy", required=False)
    allowed = field(policy_table, "policy", "allowed_models", list, ["sgd_logistic", "mlp"])
    if not all(isinstance(kind, str) for kind in allowed):
        raise InvalidParameter("[policy] allowed_models must be a list of model kinds")
    policy = NodePolicy(
        min_threshold=field(policy_table, "policy", "min_threshold", int, 2),
        min_cohort=field(policy_table, "policy", "min_cohort", int, 3),
        min_threshold_fraction=float(field(policy_table, "policy", "min_threshold_fraction", (int, float), 0.5)),
        allowed_models=tuple(allowed),
        max_rounds=field(policy_table, "policy", "max_rounds", int, 1000),
        allow_unmasked_benchmark=field(policy_table, "policy", "allow_unmasked_benchmark", bool, False),
        max_epsilon=_optional_positive(policy_table, "max_epsilon"),
        max_epsilon_total=_optional_positive(policy_table, "max_epsilon_total"),
        delta=float(field(policy_table, "policy", "delta", (int, float), 1e-5)),
        min_noise_multiplier=float(field(policy_table, "policy", "min_noise_multiplier", (int, float), 0.0)),
        max_colluders=_colluders(policy_table),
        allow_sparse_graph=field(policy_table, "policy", "allow_sparse_graph", bool, True),
        min_neighbours=field(policy_table, "policy", "min_neighbours", int, 0),
    )
    if not 0 < policy.delta < 1:
        raise InvalidParameter("[policy] delta must be in (0, 1)")
    roster_raw = raw.get("roster", [])
    if not isinstance(roster_raw, list) or not roster_raw:
        raise InvalidParameter("config needs [[roster]] entries: every federation member's name and identity key")
    roster: dict[str, bytes] = {}
    for index, entry in enumerate(roster_raw):
        where = f"roster #{index + 1}"
        if not isinstance(entry, dict):
            raise InvalidParameter(f"[[roster]] entry {index + 1} must be a table")
        name = field(entry, where, "name", str)
        if name in roster:
            raise InvalidParameter(f"[[roster]] lists {name!r} twice")
        roster[name] = parse_identity_key(field(entry, where, "identity_public_key", str), where)
    validation = float(field(data, "data", "validation_fraction", (int, float), 0.2))
    if not 0 <= validation < 1:
        raise InvalidParameter("[data] validation_fraction must be in [0, 1)")
    return NodeConfig(
        name=field(main, "node", "name", str),
        task=field(task, "task", "name", str),
        features=features if isinstance(features, int) else tuple(features),
        classes=tuple(classes),
        coordinator=field(main, "node", "coordinator", str),
        coordinator_curve_public_key=parse_public_key(field(main, "node", "coordinator_curve_public_key", str)),
        curve_secret_key_file=resolve_path(base, field(main, "node", "curve_secret_key_file", str)),
        identity_key_file=resolve_path(base, field(main, "node", "identity_key_file", str)),
        state_dir=resolve_path(base, field(main, "node", "state_dir", str)),
        data_path=resolve_path(base, field(data, "data", "path", str)),
        label_column=field(data, "data", "label_column", str, "label"),
        validation_fraction=validation,
        policy=policy,
        roster=roster,
    )


def _colluders(table: dict) -> int | float | None:
    """``max_colluders``: a count (integer) or a fraction of the roster (a number in [0, 1))."""
    if "max_colluders" not in table:
        return None
    value = field(table, "policy", "max_colluders", (int, float))
    if isinstance(value, int):
        if value < 0:
            raise InvalidParameter("[policy] max_colluders must not be negative")
        return value
    if not 0 <= value < 1:
        raise InvalidParameter("[policy] max_colluders is a count (integer) or a fraction of the roster in [0, 1)")
    return float(value)


def _optional_positive(table: dict, name: str) -> float | None:
    if name not in table:
        return None
    value = field(table, "policy", name, (int, float))
    if not value > 0:
        raise InvalidParameter(f"[policy] {name} must be positive")
    return float(value)
