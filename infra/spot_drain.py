"""Turn an EC2 spot interruption notice into Ray's preemption signal for this node.

EC2 warns a spot instance two minutes before it takes it back (instance metadata
``spot/instance-action``); Ray's cluster launcher does not listen for it. Started next to
``ray start`` on every spot worker (``infra/cluster/aws.yaml``), this polls the metadata (IMDSv2)
every ``--poll-s`` seconds and, when the notice comes, runs once::

    ray drain-node --reason DRAIN_NODE_REASON_PREEMPTION --deadline-remaining-seconds <until the reclaim>

Ray Train then tells the training workers (``ray.train.get_preemption_info``), which checkpoint at
their next step (``pipelines/training/worker.py``), and restarts them on the remaining nodes when the
deadline passes. KubeRay pods get the same drain from a ``preStop`` hook (``infra/k8s/raycluster.yaml``).
"""

from __future__ import annotations

import argparse
import calendar
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable

IMDS = "http://169.254.169.254/latest"
DEFAULT_DEADLINE_S = 120  # EC2's notice period, when the notice carries no readable time


def imds_get(path: str, timeout_s: float = 2.0) -> str | None:
    """``GET <IMDS>/meta-data/<path>`` with an IMDSv2 token; ``None`` for 404 (no notice yet)."""
    token_request = urllib.request.Request(
        f"{IMDS}/api/token", method="PUT", headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"}
    )
    with urllib.request.urlopen(token_request, timeout=timeout_s) as response:
        token = response.read().decode()
    request = urllib.request.Request(f"{IMDS}/meta-data/{path}", headers={"X-aws-ec2-metadata-token": token})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.read().decode()
    except urllib.error.HTTPError as error:
        if error.code == 404:
            return None
        raise


def seconds_until_reclaim(instance_action: str, now: float) -> int:
    """Whole seconds from ``now`` (Unix time) to the ``time`` of an ``instance-action`` notice
    (``{"action": "terminate", "time": "2026-12-04T15:02:00Z"}``), at least 1."""
    try:
        stamp = json.loads(instance_action)["time"]
        reclaim = calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ"))
    except (ValueError, KeyError, TypeError):
        return DEFAULT_DEADLINE_S
    return max(1, int(reclaim - now))


def drain_command(deadline_s: int, address: str | None) -> list[str]:
    command = ["ray", "drain-node", "--reason", "DRAIN_NODE_REASON_PREEMPTION"]
    command += [
        "--reason-message",
        "EC2 spot interruption notice",
        "--deadline-remaining-seconds",
        str(deadline_s),
    ]
    return command + (["--address", address] if address else [])


def watch(
    fetch: Callable[[], str | None],
    drain: Callable[[int], None],
    poll_s: float,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Poll ``fetch`` (the notice text, ``None`` while there is none) until a notice comes, then call
    ``drain`` once with the seconds left; returns them. Metadata errors are reported and polled past."""
    while True:
        try:
            notice = fetch()
        except OSError as error:
            print(
                f"spot_drain: instance metadata unreadable ({error}); polling on", file=sys.stderr, flush=True
            )
            notice = None
        if notice is not None:
            deadline_s = seconds_until_reclaim(notice, clock())
            print(f"spot_drain: spot interruption notice, reclaim in {deadline_s} s; draining", flush=True)
            drain(deadline_s)
            return deadline_s
        sleep(poll_s)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--address", help="Ray GCS address (default: the Ray running on this node)")
    parser.add_argument(
        "--poll-s", type=float, default=5.0, help="seconds between metadata polls (default 5)"
    )
    args = parser.parse_args(argv)
    watch(
        lambda: imds_get("spot/instance-action"),
        lambda deadline_s: subprocess.run(drain_command(deadline_s, args.address), check=False),
        args.poll_s,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
