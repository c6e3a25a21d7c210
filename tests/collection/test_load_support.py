"""The zero-downtime checks' load generator reads what it saw correctly (tests/support/load.py)."""

from __future__ import annotations

import pytest

from tests.support.load import READY_PATH, Load, Outcome


def load_with(*answers: tuple[float, str]) -> Load:
    load = Load("127.0.0.1", 1, "shop.test", "/dev/null", [READY_PATH])
    load.outcomes = [Outcome(at, READY_PATH, 200, version=version) for at, version in answers]
    return load


def test_versions_follow_the_order_requests_were_sent_not_answered() -> None:
    # A slow answer from the old release appended after a fast one from the new.
    load = load_with((1.0, "v1"), (2.1, "v2"), (2.0, "v1"), (3.0, "v2"))
    assert load.versions() == ["v1", "v2"]


def test_versions_since_a_moment_show_an_old_answer_after_it() -> None:
    load = load_with((1.0, "v1"), (2.0, "v2"), (2.5, "v1"), (3.0, "v2"))
    assert load.versions() == ["v1", "v2", "v1", "v2"]
    assert load.versions(since=2.6) == ["v2"]
    assert load.versions(since=2.4) == ["v1", "v2"]


def test_failures_count_non_2xx_and_missing_answers_from_a_moment_on() -> None:
    load = load_with((1.0, "v1"))
    load.outcomes += [Outcome(2.0, "/", 502), Outcome(3.0, "/", 0, error="ConnectionError: refused")]
    assert [o.at for o in load.failures()] == [2.0, 3.0]
    assert [o.at for o in load.failures(since=2.5)] == [3.0]


def test_load_refuses_a_target_off_loopback() -> None:
    with pytest.raises(ValueError, match="loopback only"):
        Load("10.0.0.1", 443, "shop.test", "/dev/null", [READY_PATH])
