"""Suite-wide rule: a skipped test fails the run. A test that cannot run on a machine is
a missing install step in the test command (scripts/test.sh), never a quiet pass."""

from __future__ import annotations

import pytest

SKIP_IS_FAILURE = ("skipped tests are not allowed: a test that cannot run here is a missing "
                   "install step in scripts/test.sh (the README test command); skipped with: ")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Turn a skip (mark, ``pytest.skip``, ``importorskip``, doctest SKIP) into a failure
    that says why it was skipped."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = SKIP_IS_FAILURE + str(reason)
