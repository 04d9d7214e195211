"""Resolutions in a large incident: what a resolved alert costs as its incident grows.

    python -m bench.resolve [--backend sqlite|postgresql] [--alerts 100000]

Alerts carry no index by fingerprint (migration 0009): a resolution reads its incident's
firing alerts, once per incident and ingest group. This measures that price where it is
highest, an incident holding `--alerts` alerts of 5,000 fingerprints, against the baseline
of an incident of 1,000 alerts measured in the same run: one resolved alert per request,
and 100 in one array (median of 5 requests each). Not part of `make bench`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Any

from bench.common import cli, create_key, fresh_database, http_json, log, start_crisisflow

FINGERPRINTS = 5000
REPEATS = 5


def _alert(i: int, status: str = "firing") -> dict[str, Any]:
    return {"source": "bench", "title": "storm", "fingerprint": f"fp-{i % FINGERPRINTS}",
            "status": status, "labels": {"topic": "storm"}}


def _post(base: str, key: str, body: Any) -> tuple[float, dict[str, Any]]:
    started = time.perf_counter()
    status, out = http_json("POST", f"{base}/api/v1/alerts", body, key)
    elapsed = time.perf_counter() - started
    if status != 202:
        raise SystemExit(f"POST /alerts answered {status}: {out}")
    return elapsed, out


def measure(backend: str, alerts: int) -> tuple[float, float]:
    """Median ms of one resolved alert and of an array of 100, in an incident of `alerts`."""
    with fresh_database(backend) as url:
        cli(url, "migrate")
        key = create_key(url, "monitor")
        server = start_crisisflow("bench-resolve", url)
        try:
            for start in range(0, alerts, 1000):
                _, out = _post(server.base, key,
                               [_alert(i) for i in range(start, min(alerts, start + 1000))])
            incident = out["results"][0]["incident_id"]
            one, hundred = [], []
            for rep in range(REPEATS):
                # Each request resolves fingerprints no earlier one did: all still firing.
                elapsed, out = _post(server.base, key, _alert(rep, "resolved"))
                if out["results"][0]["incident_id"] != incident:
                    raise SystemExit(f"the resolution found no incident: {out}")
                one.append(elapsed)
                first = REPEATS + rep * 100
                elapsed, _ = _post(server.base, key,
                                   [_alert(first + i, "resolved") for i in range(100)])
                hundred.append(elapsed)
            return statistics.median(one) * 1000, statistics.median(hundred) * 1000
        finally:
            server.proc.stop()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backend", choices=["sqlite", "postgresql"], default="sqlite")
    p.add_argument("--alerts", type=int, default=100_000)
    args = p.parse_args()
    if args.alerts < 1000 + REPEATS * 101:
        p.error(f"--alerts must be at least {1000 + REPEATS * 101}")
    log(f"baseline: an incident of 1,000 alerts ({args.backend})")
    base_one, base_hundred = measure(args.backend, 1000)
    log(f"an incident of {args.alerts:,} alerts ({args.backend})")
    big_one, big_hundred = measure(args.backend, args.alerts)
    print(f"| resolved alerts | {args.backend} | incident of 1,000 alerts | "
          f"incident of {args.alerts:,} | ratio |")
    print("|---|---|---|---|---|")
    print(f"| 1 per request | | {base_one:.1f} ms | {big_one:.1f} ms | "
          f"{big_one / base_one:.1f}x |")
    print(f"| 100 in one array | | {base_hundred:.1f} ms | {big_hundred:.1f} ms | "
          f"{big_hundred / base_hundred:.1f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
