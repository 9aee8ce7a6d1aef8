"""Shared plumbing of the privacy-audit suite: the report an auditor reads at the end.

Every audit test records what it checked through the ``audit`` fixture:

* ``audit.check(name, promise, passed, detail)`` — one audit check and the promise it backs;
* ``audit.canary(name, caught_by, detail="")`` — a deliberately broken variant and the check that caught
  it (``caught_by=None`` means it was *not* caught: the suite then fails), optionally with a figure;
* ``audit.empirical_audit(label, epsilon_lower_bound, epsilon_claimed)`` — an empirical privacy audit.

At the end of the run the report is printed and written to ``privacy-audit-report.txt`` in the
directory pytest was started from (or to ``$SECUREFED_AUDIT_REPORT`` if set).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import pytest


@dataclass
class AuditReport:
    checks: list[tuple[str, str, bool, str]] = field(default_factory=list)
    canaries: list[tuple[str, str | None, str]] = field(default_factory=list)
    empirical: list[tuple[str, float, float]] = field(default_factory=list)

    def check(self, name: str, promise: str, passed: bool, detail: str = "") -> None:
        self.checks.append((name, promise, bool(passed), detail))

    def canary(self, name: str, caught_by: str | None, detail: str = "") -> None:
        self.canaries.append((name, caught_by, detail))

    def empirical_audit(self, label: str, epsilon_lower_bound: float, epsilon_claimed: float) -> None:
        self.empirical.append((label, float(epsilon_lower_bound), float(epsilon_claimed)))

    def render(self) -> str:
        lines = ["securefed privacy-audit report", "=" * 30]
        passed = sum(1 for c in self.checks if c[2])
        lines.append(f"checks run: {len(self.checks)}, passed: {passed}, failed: {len(self.checks) - passed}")
        for name, promise, ok, detail in self.checks:
            lines.append(f"  [{'PASS' if ok else 'FAIL'}] {name}: {promise}" + (f" ({detail})" if detail else ""))
        caught = sum(1 for _, by, _ in self.canaries if by)
        lines.append(f"mutation canaries: {len(self.canaries)}, caught: {caught}")
        for name, by, detail in self.canaries:
            lines.append(
                f"  [{'CAUGHT' if by else 'MISSED'}] {name}" + (f" by {by}" if by else "") + (f" ({detail})" if detail else "")
            )
        lines.append("empirical privacy audits (epsilon lower bound vs claimed epsilon):")
        for label, lower, claimed in self.empirical:
            verdict = "consistent" if lower <= claimed else "EXCEEDS CLAIM"
            lines.append(f"  {label}: empirical epsilon >= {lower:.3f}, claimed {claimed:.3f} -> {verdict}")
        return "\n".join(lines)


_REPORT = AuditReport()


@pytest.fixture
def audit() -> AuditReport:
    return _REPORT


@pytest.fixture(scope="session")
def reference_runs(tmp_path_factory) -> dict:
    """The real DP runs the reference accountant recomputes, by scenario, run once for the DP audit and its canaries."""
    from tests.privacy_audit import checks_dp

    return {
        scenario: checks_dp.run_reference_scenarios(tmp_path_factory.mktemp(f"dp-{scenario}"), (scenario,))
        for scenario in checks_dp.REFERENCE_SCENARIOS
    }


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    if not (_REPORT.checks or _REPORT.canaries or _REPORT.empirical):
        return
    text = _REPORT.render()
    terminalreporter.write_sep("=", "privacy audit")
    terminalreporter.write_line(text)
    target = Path(os.environ.get("SECUREFED_AUDIT_REPORT", "privacy-audit-report.txt"))
    try:
        target.write_text(text + "\n", encoding="utf-8")
    except OSError:
        terminalreporter.write_line(f"(could not write {target})")
