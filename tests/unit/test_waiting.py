"""wait_until: polls until the condition holds, fails with what was awaited."""

import pytest

from taskguard.testing import wait_until


def test_returns_the_first_truthy_value_without_waiting_out_the_timeout() -> None:
    values = iter([0, None, "", "ready", "later"])
    assert wait_until(lambda: next(values), timeout=60, interval=0.001) == "ready"


def test_times_out_with_what_was_awaited() -> None:
    with pytest.raises(TimeoutError, match=r"not reached within 0.02 s: the door to open"):
        wait_until(lambda: False, timeout=0.02, interval=0.005, message="the door to open")


def test_a_callable_message_reports_the_state_at_the_deadline() -> None:
    seen: list[int] = []

    def check() -> bool:
        seen.append(1)
        return False

    with pytest.raises(TimeoutError, match=r"checked \d+ times"):
        wait_until(
            check, timeout=0.02, interval=0.005, message=lambda: f"checked {len(seen)} times"
        )
    assert len(seen) >= 2  # called at once and again at the deadline at least


def test_a_zero_timeout_checks_once() -> None:
    calls: list[int] = []
    assert wait_until(lambda: calls.append(1) or True, timeout=0) is True
    with pytest.raises(TimeoutError):
        wait_until(lambda: calls.append(1), timeout=0)
    assert len(calls) == 2


@pytest.mark.parametrize(
    ("timeout", "interval", "field"),
    [(-1, 0.01, "timeout"), (1, 0, "interval"), (1, -0.5, "interval")],
)
def test_bad_arguments(timeout: float, interval: float, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        wait_until(lambda: True, timeout=timeout, interval=interval)
