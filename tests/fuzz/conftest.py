"""The fuzz suites' tally: every case's outcome, printed at the end of the session (cases, correct 4xx, 5xx for
client mistakes, good requests disturbed, rows lost)."""

from collections import Counter

import pytest

TALLY: Counter = Counter()


@pytest.fixture(scope="session")
def fuzz_tally() -> Counter:
    return TALLY


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    if TALLY:
        terminalreporter.write_line("fuzz totals: " + ", ".join(f"{k}={v}" for k, v in sorted(TALLY.items())))
