"""`bigbatch submit` retries while a fresh cluster's Jobs API is up but has no agent yet, and only then."""

from __future__ import annotations

import pytest

from cluster.commands import submit


class FlakyClient:
    """Answers like Ray's dashboard before its agent registers: `fails` times "No available agent", then a job id."""

    calls = 0

    def __init__(self, fails: int, message: str = "Request failed with status code 500: No available agent to submit job"):
        self.fails, self.message = fails, message

    def submit_job(self, entrypoint: str, runtime_env: dict) -> str:
        FlakyClient.calls += 1
        if FlakyClient.calls <= self.fails:
            raise RuntimeError(self.message)
        return "raysubmit_123"


@pytest.fixture(autouse=True)
def no_sleep(monkeypatch):
    slept: list[float] = []
    clock = [1000.0]

    def sleep(s: float) -> None:
        slept.append(s)
        clock[0] += s

    monkeypatch.setattr(submit.time, "sleep", sleep)
    monkeypatch.setattr(submit.time, "time", lambda: clock[0])
    FlakyClient.calls = 0
    return slept


def test_retries_until_agent_ready(no_sleep):
    client, job = submit.submit_when_ready(lambda: FlakyClient(3), "python -m x", {}, timeout=60)
    assert job == "raysubmit_123" and FlakyClient.calls == 4
    assert no_sleep == [1.0, 2.0, 4.0]  # exponential backoff


def test_other_errors_are_not_retried(no_sleep):
    with pytest.raises(RuntimeError, match="bad runtime_env"):
        submit.submit_when_ready(lambda: FlakyClient(5, "400: bad runtime_env"), "x", {}, timeout=60)
    assert FlakyClient.calls == 1 and no_sleep == []


def test_gives_up_at_the_deadline(no_sleep):
    with pytest.raises(RuntimeError, match="No available agent"):
        submit.submit_when_ready(lambda: FlakyClient(100), "x", {}, timeout=20)
    assert no_sleep == [1.0, 2.0, 4.0, 8.0] and FlakyClient.calls == 5  # the next wait would pass 20 s
