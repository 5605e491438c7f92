"""``infra/spot_drain.py``: an EC2 spot interruption notice becomes one Ray preemption drain (no cloud)."""

from __future__ import annotations

import calendar
import time

from infra_support import REPO  # noqa: F401  (puts infra/ on sys.path)
from spot_drain import DEFAULT_DEADLINE_S, drain_command, seconds_until_reclaim, watch

NOW = calendar.timegm(time.strptime("2026-12-04T15:00:00Z", "%Y-%m-%dT%H:%M:%SZ"))


def test_the_deadline_is_the_time_left_until_the_reclaim():
    assert seconds_until_reclaim('{"action": "terminate", "time": "2026-12-04T15:02:00Z"}', NOW) == 120
    assert (
        seconds_until_reclaim('{"action": "stop", "time": "2026-12-04T14:59:00Z"}', NOW) == 1
    )  # already due
    assert seconds_until_reclaim("not json", NOW) == DEFAULT_DEADLINE_S


def test_polls_until_the_notice_then_drains_once_with_the_time_left(capsys):
    answers = iter(
        [None, OSError("IMDS timed out"), None, '{"action": "terminate", "time": "2026-12-04T15:01:30Z"}']
    )

    def fetch():
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    drained, waits = [], []
    assert watch(fetch, drained.append, poll_s=5, clock=lambda: NOW, sleep=waits.append) == 90
    assert drained == [90] and waits == [5, 5, 5]
    assert "instance metadata unreadable" in capsys.readouterr().err


def test_drain_command_is_rays_preemption_drain_with_the_deadline():
    assert drain_command(90, None) == [
        *("ray", "drain-node", "--reason", "DRAIN_NODE_REASON_PREEMPTION", "--reason-message"),
        *("EC2 spot interruption notice", "--deadline-remaining-seconds", "90"),
    ]
    assert drain_command(5, "10.0.0.1:6379")[-2:] == ["--address", "10.0.0.1:6379"]
