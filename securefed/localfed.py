"""A whole federation on one machine: keys, node data files, configs and daemon processes.

``securefed demo`` and the integration tests use this to lay out what a real
deployment has (one folder per site, TOML configs, key files with mode 0600)
in a temporary folder, and to start the real daemons as separate processes
talking CURVE-encrypted ZeroMQ over loopback.
"""

from __future__ import annotations

import base64
import os
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from securefed.crypto.identity import SigningKey
from securefed.learning.data import save_csv
from securefed.wire.keys import CurveKeyPair

__all__ = ["LocalFederation", "free_port", "toml_value"]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def toml_value(value: object) -> str:
    """A TOML literal for the simple values our configs hold."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{key} = {toml_value(item)}" for key, item in value.items()) + " }"
    raise TypeError(f"no TOML form for {type(value).__name__}")


_SUBTABLES = ("dp", "preprocessing", "computations")


def _preprocessing_lines(task: dict) -> list[str]:
    """The [task.preprocessing] table for a task dict's ``preprocessing`` entry (a table or a Preprocessing)."""
    table = task.get("preprocessing")
    if not table:
        return []
    if not isinstance(table, dict):  # a securefed.preprocessing.Preprocessing
        table = table.to_json()
    return ["", "[task.preprocessing]", *(f"{key} = {toml_value(value)}" for key, value in table.items())]


@dataclass
class LocalFederation:
    """The folder layout of a loopback federation; :meth:`create` writes it all."""

    root: Path
    node_names: list[str]
    port: int
    coordinator_config: Path = field(init=False)
    node_configs: dict[str, Path] = field(init=False)

    def __post_init__(self) -> None:
        self.coordinator_config = self.root / "coordinator" / "coordinator.toml"
        self.node_configs = {name: self.root / name / "node.toml" for name in self.node_names}

    @property
    def endpoint(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    @property
    def state_path(self) -> Path:
        return self.root / "coordinator" / "state" / "coordinator.sqlite"

    @property
    def transcript_path(self) -> Path:
        return self.root / "coordinator" / "transcript.bin"

    @property
    def status_path(self) -> Path:
        return self.root / "coordinator" / "state" / "status.json"

    @classmethod
    def create(
        cls,
        root: str | Path,
        node_data: dict[str, tuple[np.ndarray, np.ndarray]],
        feature_names: list[str],
        task: dict,
        deadlines: dict | None = None,
        policy: dict | None = None,
        port: int | None = None,
        extra_nodes: dict[str, tuple[CurveKeyPair, SigningKey]] | None = None,
        transcript: bool = False,
        validation_fraction: float = 0.2,
    ) -> LocalFederation:
        """Write keys, data, and configs. ``task`` holds the [task] table (name, model, rounds, ...); its
        ``dp`` and ``preprocessing`` entries become the [task.dp] and [task.preprocessing] tables, and the
        nodes' configs declare the same features, classes and preprocessing (the sites' agreement)."""
        root = Path(root)
        names = list(node_data)
        federation = cls(root, names, port or free_port())
        coordinator_dir = root / "coordinator"
        coordinator_dir.mkdir(parents=True, exist_ok=True)
        coordinator_keys = CurveKeyPair.generate()
        coordinator_keys.save(coordinator_dir / "curve.key", coordinator_dir / "curve.pub")
        node_keys: dict[str, tuple[CurveKeyPair, SigningKey]] = {}
        for name in names:
            folder = root / name
            folder.mkdir(parents=True, exist_ok=True)
            curve, identity = CurveKeyPair.generate(), SigningKey.generate()
            curve.save(folder / "curve.key", folder / "curve.pub")
            identity.save(folder / "identity.pem")
            node_keys[name] = (curve, identity)
            X, y = node_data[name]
            save_csv(folder / "data.csv", X, y, feature_names, "label")
        members = dict(node_keys)
        members.update(extra_nodes or {})
        federation._write_coordinator_config(coordinator_keys, members, task, deadlines or {}, transcript)
        for name in names:
            federation._write_node_config(name, coordinator_keys, members, task, policy or {}, validation_fraction)
        return federation

    def _write_coordinator_config(self, keys: CurveKeyPair, members: dict, task: dict, deadlines: dict, transcript: bool) -> None:
        lines = [
            "[coordinator]",
            f"listen = {toml_value(self.endpoint)}",
            'state_dir = "state"',
            'curve_secret_key_file = "curve.key"',
            *(['transcript_file = "transcript.bin"'] if transcript else []),
            "",
            "[task]",
            *(f"{key} = {toml_value(value)}" for key, value in task.items() if key not in _SUBTABLES),
            *(["", "[task.dp]", *(f"{k} = {toml_value(v)}" for k, v in task["dp"].items())] if task.get("dp") else []),
            *_preprocessing_lines(task),
            "",
            "[deadlines]",
            *(f"{key} = {toml_value(value)}" for key, value in deadlines.items()),
        ]
        for computation in task.get("computations", []):  # model = "analytics"
            lines += [
                "",
                "[[computations]]",
                f"kind = {toml_value(computation['kind'])}",
                f"params = {toml_value(computation['params'])}",
            ]
        for name, (curve, identity) in members.items():
            lines += [
                "",
                "[[nodes]]",
                f"name = {toml_value(name)}",
                f"curve_public_key = {toml_value(curve.public.decode())}",
                f"identity_public_key = {toml_value(base64.b64encode(identity.public_bytes).decode())}",
            ]
        self.coordinator_config.write_text("\n".join(lines) + "\n")

    def _write_node_config(
        self, name: str, coordinator_keys: CurveKeyPair, members: dict, task: dict, policy: dict, validation_fraction: float = 0.2
    ) -> None:
        lines = [
            "[node]",
            f"name = {toml_value(name)}",
            f"coordinator = {toml_value(self.endpoint)}",
            f"coordinator_curve_public_key = {toml_value(coordinator_keys.public.decode())}",
            'curve_secret_key_file = "curve.key"',
            'identity_key_file = "identity.pem"',
            'state_dir = "state"',
            "",
            "[task]",
            f"name = {toml_value(task['name'])}",
            f"features = {toml_value(task['features'])}",
            *([f"classes = {toml_value(task['classes'])}"] if task.get("target") != "numeric" else ['target = "numeric"']),
            *_preprocessing_lines(task),
            "",
            "[data]",
            'path = "data.csv"',
            'label_column = "label"',
            f"validation_fraction = {toml_value(validation_fraction)}",
            "",
            "[policy]",
            *(f"{key} = {toml_value(value)}" for key, value in policy.items()),
        ]
        for member, (_, identity) in members.items():
            lines += [
                "",
                "[[roster]]",
                f"name = {toml_value(member)}",
                f"identity_public_key = {toml_value(base64.b64encode(identity.public_bytes).decode())}",
            ]
        self.node_configs[name].write_text("\n".join(lines) + "\n")

    # --- processes ------------------------------------------------------------

    def _spawn(self, args: list[str], log_name: str) -> subprocess.Popen:
        log_path = self.root / f"{log_name}.log"
        env = dict(os.environ)
        env.setdefault("PYTHONUNBUFFERED", "1")
        env.setdefault("OMP_NUM_THREADS", "1")
        env.setdefault("OPENBLAS_NUM_THREADS", "1")
        handle = open(log_path, "ab")
        try:
            return subprocess.Popen(
                [sys.executable, "-m", "securefed.cli", *args],
                stdout=handle,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
            )
        finally:
            handle.close()

    def start_coordinator(self) -> subprocess.Popen:
        return self._spawn(["coordinator", "--config", str(self.coordinator_config)], "coordinator")

    def start_node(self, name: str) -> subprocess.Popen:
        return self._spawn(["node", "--config", str(self.node_configs[name])], name)

    def log(self, name: str) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""
