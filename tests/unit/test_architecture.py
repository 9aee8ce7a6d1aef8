"""The one-way dependency direction of docs/architecture.md, checked on the source."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def modules_under(package: str) -> list[Path]:
    return sorted((ROOT / package.replace(".", "/")).rglob("*.py"))


def _violations(package: str, forbidden: tuple[str, ...]) -> list[str]:
    found = []
    for path in modules_under(package):
        for name in imported_modules(path):
            if any(name == bad or name.startswith(bad + ".") for bad in forbidden):
                found.append(f"{path.relative_to(ROOT)} imports {name}")
    return found


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        (
            "securefed.secagg",
            ("zmq", "securefed.wire", "securefed.federation", "securefed.learning", "socket", "threading", "time", "random"),
        ),
        ("securefed.crypto", ("zmq", "securefed.wire", "securefed.secagg", "securefed.federation", "random")),
        ("securefed.federation", ("zmq", "coordinator", "node")),
        ("securefed.learning", ("zmq", "securefed.wire", "securefed.secagg", "coordinator", "node")),
        # histogram trees are pure computations over local data and summed vectors (sans-IO)
        (
            "securefed.analytics",
            (
                "zmq",
                "securefed.wire",
                "securefed.federation",
                "securefed.secagg",
                "socket",
                "threading",
                "time",
                "random",
                "coordinator",
                "node",
            ),
        ),
        (
            "securefed.trees",
            (
                "zmq",
                "securefed.wire",
                "securefed.secagg",
                "securefed.federation",
                "securefed.learning",
                "sklearn",
                "socket",
                "threading",
                "time",
                "coordinator",
                "node",
            ),
        ),
    ],
)
def test_dependency_direction(package: str, forbidden: tuple[str, ...]) -> None:
    assert _violations(package, forbidden) == []


def test_library_does_not_import_daemons_at_module_level() -> None:
    offenders = []
    for path in modules_under("securefed"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:  # module level only; securefed.status imports lazily inside a function
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in ("coordinator", "node"):
                offenders.append(f"{path.relative_to(ROOT)}: {node.module}")
            if isinstance(node, ast.Import) and any(a.name.split(".")[0] in ("coordinator", "node") for a in node.names):
                offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []


def test_no_unsafe_deserialisation_anywhere() -> None:
    offenders = []
    for package in ("securefed", "coordinator", "node"):
        for path in modules_under(package):
            text = path.read_text(encoding="utf-8")
            names = imported_modules(path)
            if names & {"pickle", "cPickle", "dill", "cloudpickle", "marshal", "shelve", "joblib"}:
                offenders.append(f"{path.relative_to(ROOT)} imports a code-running deserializer")
            if "allow_pickle=True" in text.replace(" ", "") or "yaml.load(" in text:
                offenders.append(f"{path.relative_to(ROOT)} enables pickle")
    assert offenders == []


def test_the_architecture_check_can_fail(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import zmq\nfrom securefed.wire import codec\n")
    assert {"zmq", "securefed.wire"} <= imported_modules(bad)
