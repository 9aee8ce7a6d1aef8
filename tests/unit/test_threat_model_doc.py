"""Every test that docs/threat-model.md cites as backing a promise exists."""

from __future__ import annotations

import re
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
DOC = TESTS.parent / "docs" / "threat-model.md"


def cited() -> list[tuple[str, str | None]]:
    citations = []
    for match in re.finditer(r"`((?:PA/|unit/|property/|integration/)[\w/.]+\.py)(?:::(\w+))?", DOC.read_text()):
        path = match.group(1).replace("PA/", "privacy_audit/")
        citations.append((path, match.group(2)))
    return citations


def test_the_threat_model_cites_tests() -> None:
    assert len(cited()) >= 30


def test_every_cited_test_exists() -> None:
    missing = []
    for path, name in cited():
        file = TESTS / path
        if not file.exists():
            missing.append(path)
        elif name and not re.search(rf"def {name}\b", file.read_text()):
            missing.append(f"{path}::{name}")
    assert missing == []


def test_every_attack_named_in_the_threat_model_is_a_check() -> None:
    text = DOC.read_text()
    checks = (TESTS / "privacy_audit" / "checks_secagg.py").read_text()
    for check in re.findall(r"\[(refuses-[\w-]+)\]", text):
        assert f'"{check}"' in checks, check
