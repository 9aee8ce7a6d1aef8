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


#: The command-line entry points: the only modules of securefed that may import the daemon packages,
#: and only inside the function that runs the command (docs/architecture.md, "Dependency direction").
CLI_ENTRY_POINTS = {
    "securefed/cli.py",
    "securefed/check.py",
    "securefed/status.py",
    "securefed/demo.py",
    "securefed/analytics_cli.py",
    "securefed/model_cli.py",
    "securefed/report_cli.py",
}
DAEMONS = ("coordinator", "node")


def _type_checking_only(tree: ast.Module) -> set[int]:
    """ids of the import nodes under ``if TYPE_CHECKING:`` (annotations only: they never run)."""
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            skipped.update(id(inner) for child in node.body for inner in ast.walk(child))
    return skipped


def daemon_imports(path: Path) -> list[tuple[int, str, bool]]:
    """Every import of a daemon package in ``path``: (line, module, made at module level)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped = _type_checking_only(tree)
    top = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        for name in names:
            if name.split(".")[0] in DAEMONS:
                found.append((node.lineno, name, id(node) in top))
    return found


def test_only_the_command_line_entry_points_import_the_daemons_and_only_in_functions() -> None:
    offenders = []
    for path in modules_under("securefed"):
        where = str(path.relative_to(ROOT))
        for line, name, module_level in daemon_imports(path):
            if where not in CLI_ENTRY_POINTS:
                offenders.append(f"{where}:{line} imports {name} (only the command-line entry points may)")
            elif module_level:
                offenders.append(f"{where}:{line} imports {name} at module level (import it in the command's function)")
    assert offenders == []


def test_the_daemon_import_check_sees_imports_inside_functions(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from coordinator.config import CoordinatorConfig\n"
        "import node.daemon\n"
        "def run():\n    from coordinator.daemon import run_coordinator\n    return run_coordinator\n"
    )
    assert daemon_imports(sample) == [(4, "node.daemon", True), (6, "coordinator.daemon", False)]


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
