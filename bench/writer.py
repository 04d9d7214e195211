"""The CPU the ingest path costs the event loop's thread, without HTTP or load.

    python -m bench.writer [--backend sqlite|postgresql] [--arrays 80] [--groups 300]

The wrk benchmarks (`bench.run`) measure throughput, which on a small virtual machine moves
by a quarter between runs of the same code; a change of a few per cent in the ingest path's
own work drowns in that. This measures the work itself, in one process, with the alerts of
the wrk benchmarks' mix (80 % repeats of the pool's fingerprints, 20 % fresh ones over 5,000
topics), through the router's own parser and `IngestWriter.submit`, taking each step's CPU
time on the calling thread (`time.thread_time`; a wait for the database costs none):

- arrays of 1,000 alerts, one array per transaction: parsing, and writing;
- single-alert requests, GROUP at a time in flight, which the running writer takes as one
  group (one transaction) as it does in a storm: parsing and writing together.

A warm-up first opens the incidents of (nearly) all topics, so what is measured is the
steady state of a storm: mostly attaching, some openings. The baseline, measured on the same
bodies interleaved with them so that machine drift during the run cancels out of the ratios:
what the bare baseline app does with them (orjson, then `GenericAlertIn` validation through a
TypeAdapter, as FastAPI does). Not part of `make bench`.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import orjson
import uvloop
from pydantic import TypeAdapter

from bench.alerts import TOPICS, make_alert, pool_alerts
from bench.common import BenchError, cli, fresh_database, log

ARRAY = 1000
GROUP = 16
REPEAT_SHARE = 0.8
Figures = dict[str, list[float]]


def alerts(pool: list[dict[str, Any]], count: int, rng: random.Random, tag: str
           ) -> list[dict[str, Any]]:
    """`count` alerts of the mix of bench/batch.lua and bench/ingest.lua."""
    out = []
    for i in range(count):
        if rng.random() < REPEAT_SHARE:
            out.append(pool[rng.randrange(len(pool))])
        else:
            out.append(make_alert(f"fp-{tag}-{i}", rng.randrange(TOPICS), rng))
    return out


def _cpu(fn: Callable[[bytes], Any], body: bytes) -> tuple[float, Any]:
    started = time.thread_time()
    result = fn(body)
    return time.thread_time() - started, result


async def measure(url: str, arrays: int, warmup: int, groups: int) -> tuple[Figures, Figures]:
    """Main-thread CPU seconds per array (baseline, parse, write) and per group of GROUP
    single-alert requests (baseline, ingest: parsing and writing)."""
    from app.alerts.router import INGEST_ROUTES
    from app.alerts.schemas import GenericAlertIn
    from app.alerts.writer import IngestWriter
    from app.bootstrap import build_env, open_database
    from app.core import collector
    from app.core.config import Settings

    settings = Settings(database_url=url)
    db = open_database(settings)
    writer = IngestWriter(db, build_env(settings), settings.group_by,
                          settings.raw_alert_max_bytes)
    parse = INGEST_ROUTES["/alerts"].parse
    many, one = TypeAdapter(list[GenericAlertIn]), TypeAdapter(GenericAlertIn)
    rng = random.Random(7)
    batch: Figures = {"baseline": [], "parse": [], "write": []}
    single: Figures = {"baseline": [], "ingest": []}
    pool = pool_alerts()
    try:
        for start in range(0, len(pool), ARRAY):  # the pool's incidents, as bench.run does
            await writer.submit(parse(orjson.dumps(pool[start:start + ARRAY])), "bench", "k")
        work = [orjson.dumps(alerts(pool, ARRAY, rng, f"a{n}")) for n in range(warmup + arrays)]
        log(f"  warm-up: {warmup} arrays of {ARRAY}")
        for body in work[:warmup]:
            await writer.submit(parse(body), "bench", "k")
        collector.settle()  # as the service does once started
        log(f"  measuring: {arrays} arrays of {ARRAY}")
        for body in work[warmup:]:
            spent, _ = _cpu(lambda b: many.validate_python(orjson.loads(b)), body)
            batch["baseline"].append(spent)
            spent, parsed = _cpu(parse, body)
            batch["parse"].append(spent)
            started = time.thread_time()
            await writer.submit(parsed, "bench", "k")
            batch["write"].append(time.thread_time() - started)

        writer.start()
        log(f"  measuring: {groups} groups of {GROUP} single-alert requests")
        for n in range(groups):
            bodies = [orjson.dumps(a) for a in alerts(pool, GROUP, rng, f"s{n}")]
            started = time.thread_time()
            for body in bodies:
                one.validate_python(orjson.loads(body))
            single["baseline"].append(time.thread_time() - started)
            started = time.thread_time()
            await asyncio.gather(*[writer.submit(parse(body), "bench", "k") for body in bodies])
            single["ingest"].append(time.thread_time() - started)
    finally:
        await writer.stop()
        await db.dispose()
    return batch, single


def report(backend: str, batch: Figures, single: Figures) -> list[str]:
    per = {k: statistics.median(v) * 1e6 / ARRAY for k, v in batch.items()}  # µs an alert
    per1 = {k: statistics.median(v) * 1e6 / GROUP for k, v in single.items()}
    total = per["parse"] + per["write"]

    def line(what: str, value: float, base: float) -> str:
        return f"  {what:<34} {value:6.1f} µs  {value / base:5.2f}x"

    return [
        f"{backend}: main-thread CPU an alert (medians of {len(batch['write'])} arrays of "
        f"{ARRAY} and {len(single['ingest'])} groups of {GROUP} single-alert requests)",
        line("arrays: baseline validation", per["baseline"], per["baseline"]),
        line("arrays: parse", per["parse"], per["baseline"]),
        line("arrays: write", per["write"], per["baseline"]),
        line("arrays: parse + write", total, per["baseline"])
        + f"  (one thread: at most {1e6 / total:,.0f} alerts/s)",
        line("single: baseline validation", per1["baseline"], per1["baseline"]),
        line("single: parse + write", per1["ingest"], per1["baseline"])
        + f"  (one thread: at most {1e6 / per1['ingest']:,.0f} requests/s)",
    ]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backend", action="append", choices=("sqlite", "postgresql"), default=[])
    p.add_argument("--arrays", type=int, default=80, help="measured arrays of 1,000 alerts")
    p.add_argument("--warmup", type=int, default=100, help="arrays before measuring")
    p.add_argument("--groups", type=int, default=300,
                   help=f"measured groups of {GROUP} single-alert requests")
    args = p.parse_args()
    if min(args.arrays, args.groups) < 1 or args.warmup < 0:
        p.error("--arrays and --groups must be at least 1, --warmup at least 0")
    lines = []
    for backend in args.backend or ["sqlite", "postgresql"]:
        log(f"{backend}:")
        try:
            with fresh_database(backend) as url:
                cli(url, "migrate")
                # The event loop the service runs on (uvicorn's and the ingest process's).
                lines += report(backend, *uvloop.run(
                    measure(url, args.arrays, args.warmup, args.groups)))
        except BenchError as exc:
            if lines:
                print("\n".join(lines))
            print(f"{backend}: could not run: {exc}", file=sys.stderr)
            return 1
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
