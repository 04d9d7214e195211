"""Run the crisisflow benchmarks and print one table (`make bench` = every benchmark).

    python -m bench.run                                   # the full spec (~10-14 min on 2 cores)
    python -m bench.run --only ingest --backend sqlite --duration 5
    python -m bench.run --only ingest --backend sqlite --profile   # + py-spy of the server

Benchmarks: ingest (and peak RSS during it), batch, escalation, reads, scaleout; each on
SQLite and PostgreSQL (scaleout: PostgreSQL only), against a bare FastAPI baseline measured in
the same run. Full output: bench/results/latest.txt; server logs and raw wrk output:
bench/results/logs/. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import functools
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench import common
from bench.alerts import POOL, TOPICS, pool_alerts, write_pool
from bench.common import (
    LOGS,
    RESULTS,
    BenchError,
    RssSampler,
    Server,
    WrkResult,
    cli,
    create_key,
    fresh_database,
    http_json,
    kib,
    log,
    out,
    proc_status,
    run_wrk,
)

BENCHMARKS = ("ingest", "batch", "escalation", "reads", "scaleout")
BACKENDS = ("sqlite", "postgresql")
TARGETS = {
    "ingest_ratio": 0.5, "ingest_p99_ms": 50.0, "batch_alerts_s": 20_000.0,
    "escalation_p99_ms": 250.0, "reads_p95_ms": 50.0, "rss_mib": 300.0,
}
_BASELINE_UNITS = {"single": "req/s", "batch": "alerts/s"}
READ_PATHS = {
    "filters": "/api/v1/incidents?state=assessed&severity=high&limit=50",
    "q": "/api/v1/incidents?q=tin%20gia&limit=50",
}


@dataclass
class Row:
    bench: str
    backend: str
    figures: str
    ratio: str = ""
    target: str = ""
    result: str = ""
    notes: list[str] = field(default_factory=list)


@dataclass
class Config:
    duration: float
    warmup: float
    connections: int
    threads: int
    batch_connections: int
    batch_size: int
    read_connections: int
    escalation_rate: float
    read_counts: dict[str, int]
    profile: bool
    baseline: bool = True


class Run:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.rows: list[Row] = []
        # Every measurement of the baseline, by kind ("single", "batch"): each ratio is taken
        # against the mean of those right before and right after its benchmark (`around`).
        self.baselines: dict[str, list[tuple[float, WrkResult]]] = {"single": [], "batch": []}
        self.issues: list[str] = []
        self.pool_file = RESULTS / "pool.jsonl"
        self.pool = pool_alerts(POOL, TOPICS)
        write_pool(self.pool_file, self.pool)
        self.nonce_seq = 0

    def nonce(self, tag: str) -> str:
        self.nonce_seq += 1
        return f"{tag}{os.getpid()}x{self.nonce_seq}x{time.time_ns() % 10**9}"

    # -- helpers -------------------------------------------------------------------------

    def wrk(self, server: Server, script: str, *, connections: int, duration: float,
            timeout_s: float, tag: str, key: str = "", extra: dict[str, str] | None = None,
            path: str = "/api/v1/alerts", warmup: bool = True) -> WrkResult:
        env = {"BENCH_KEY": key, "BENCH_POOL_FILE": str(self.pool_file),
               "BENCH_TOPICS": str(TOPICS), "BENCH_PATH": path, **(extra or {})}
        if warmup and self.cfg.warmup > 0:
            run_wrk(server.base + path, script, threads=self.cfg.threads,
                    connections=connections, duration=self.cfg.warmup, timeout_s=timeout_s,
                    env={**env, "BENCH_NONCE": self.nonce("w")}, tag=f"{tag}-warmup")
        res = run_wrk(server.base + path, script, threads=self.cfg.threads,
                      connections=connections, duration=duration, timeout_s=timeout_s,
                      env={**env, "BENCH_NONCE": self.nonce("m")}, tag=tag)
        log(f"  {tag}: {res.requests} requests in {res.duration_s:.1f}s, "
            f"{res.rps:.0f} req/s, p50 {fmt_ms(res.p('p50'))}, p99 {fmt_ms(res.p('p99'))}, "
            f"non-2xx {res.non2xx}, socket errors {res.socket_errors}")
        return res

    def register_pool(self, server: Server, key: str) -> None:
        """Post the known-fingerprint pool once, so the 80 % repeats are real repeats."""
        for lo in range(0, len(self.pool), 1000):
            status, body = http_json("POST", server.base + "/api/v1/alerts",
                                     self.pool[lo:lo + 1000], key=key, timeout=120)
            if status != 202:
                raise BenchError(f"registering the pool: HTTP {status}: {str(body)[:300]}")

    def server_logs(self, server: Server | common.Proc, tag: str) -> None:
        proc = server.proc if isinstance(server, Server) else server
        summary = common.server_log_summary(proc)
        counts = summary["counts"]
        if counts or summary["tracebacks"]:
            msg = (f"{tag}: server stderr has {counts} "
                   f"({summary['tracebacks']} with tracebacks), see {summary['path']}")
            log("  " + msg)
            for sample in summary["samples"]:
                log("    " + sample)
            self.issues.append(msg + "".join(f"\n    {s}" for s in summary["samples"]))
        else:
            log(f"  {tag}: server stderr clean (no warnings or errors)")

    def ratio(self, value: float, base: float | None) -> float | None:
        return value / base if base else None

    def latest_baseline(self, kind: str) -> float | None:
        return self.baselines[kind][-1][0] if self.baselines[kind] else None

    # -- baseline -------------------------------------------------------------------------

    def measure_baseline(self, kind: str) -> float | None:
        """The bare baseline (bench/baseline_app.py), measured right before and right after
        each benchmark judged against it (`around`): this machine's speed was seen to move by
        2x within minutes, so a baseline measured once at the start made the ratios of later
        benchmarks depend on when the machine changed pace."""
        if not self.cfg.baseline:
            return None
        server = common.start_baseline(f"baseline-{kind}")
        try:
            if kind == "single":
                res = self.wrk(server, "ingest.lua", connections=self.cfg.connections,
                               duration=self.cfg.duration, timeout_s=10,
                               tag=f"baseline-ingest-{len(self.baselines[kind]) + 1}")
                rate = res.ok_rps
            else:
                res = self.wrk(server, "batch.lua", connections=self.cfg.batch_connections,
                               duration=self.cfg.duration, timeout_s=60,
                               tag=f"baseline-batch-{len(self.baselines[kind]) + 1}",
                               extra={"BENCH_BATCH": str(self.cfg.batch_size)})
                rate = res.ok_rps * self.cfg.batch_size
        finally:
            server.proc.stop()
        self.server_logs(server, "baseline")
        self.baselines[kind].append((rate, res))
        return rate

    def around(self, kind: str, before: float | None) -> tuple[float | None, str]:
        """The baseline a benchmark is judged against: the mean of the measurements right
        before it (`before`) and right after it (taken here), and a note naming both."""
        after = self.measure_baseline(kind)
        if before is None or after is None:
            return None, ""
        return ((before + after) / 2,
                f"baseline before/after: {before:,.0f}/{after:,.0f} {_BASELINE_UNITS[kind]}")

    def baseline_rows(self) -> list[Row]:
        """One row per kind: every measurement of the run, in order."""
        rows = []
        for kind, label in (("single", "baseline: 1 alert/request"),
                            ("batch", f"baseline: {self.cfg.batch_size} alerts/request")):
            runs = self.baselines[kind]
            if not runs:
                continue
            rates = ", ".join(f"{rate:,.0f}" for rate, _ in runs)
            p99 = ", ".join(fmt_ms(res.p("p99")) for _, res in runs)
            times = "measured once" if len(runs) == 1 else \
                f"measured {len(runs)} times, before and after each benchmark judged against it"
            rows.append(Row(label, "none", f"{rates} {_BASELINE_UNITS[kind]} (p99 {p99}; {times})",
                            "1.00×"))
        return rows

    # -- 1 + 5 + 6: ingest, peak RSS, scale-out -------------------------------------------

    def run_ingest(self, backend: str, *, scaleout: bool = False) -> None:
        name = "scale-out ingest (2 API + 1 worker)" if scaleout else "ingest"
        tag = f"{'scaleout' if scaleout else 'ingest'}-{backend}"
        log(f"{name} on {backend}: POST /alerts, 1 alert/request, {self.cfg.connections} "
            f"connections, {self.cfg.duration:g}s; 80% known fingerprints, 20% new, "
            f"{TOPICS} topics")
        base = self.measure_baseline("single")
        with fresh_database(backend) as url:
            cli(url, "migrate")
            key = create_key(url, "monitor")
            worker = None
            server = common.start_crisisflow(tag, url, workers=2 if scaleout else 1,
                                             no_worker=scaleout)
            try:
                if scaleout:
                    worker = common.start_worker(f"{tag}-worker", url)
                pids = common.group_pids(server.proc.pid)
                serving = common.listening_pids(server.port, pids)
                if scaleout:
                    # uvicorn's supervisor binds the socket and its spawned children serve it
                    # (the group also holds multiprocessing's resource tracker).
                    children = [p for p in serving if p != server.proc.pid]
                    watch = children or [server.proc.pid]
                    log(f"  supervisor pid {server.proc.pid}, process group {pids}, "
                        f"API processes (holding the socket) {children}")
                else:
                    watch = serving or [server.proc.pid]
                    same = serving == [server.proc.pid]
                    log(f"  `crisisflow serve` pid {server.proc.pid}; the listening socket "
                        f"is held by {serving} -> the serving process "
                        f"{'is' if same else 'is NOT'} the serve process itself")
                    if not same:
                        self.issues.append(f"{tag}: listening pid(s) {serving} differ from "
                                           f"serve pid {server.proc.pid}")
                self.register_pool(server, key)  # the ingest process is up once this is done
                ingest = common.ingest_pids(common.group_pids(server.proc.pid))
                log(f"  ingest process {ingest or 'none (alerts written in the API process)'}")
                profilers = [(t, self.start_profiler(t, pid)) for t, pid in
                             [(tag, watch[0]), *((f"{tag}-ingest-process", p) for p in ingest)]
                             ] if self.cfg.profile else []
                try:
                    with RssSampler(watch + ingest) as rss:
                        res = self.wrk(server, "ingest.lua", connections=self.cfg.connections,
                                       duration=self.cfg.duration, timeout_s=10, tag=tag,
                                       key=key)
                finally:
                    for t, profiler in profilers:
                        if profiler:
                            self.finish_profiler(t, profiler)
                hwm = {p: kib(proc_status(p).get("VmHWM")) for p in watch}
                ingest_hwm = {p: kib(proc_status(p).get("VmHWM")) for p in ingest}
            finally:
                server.proc.stop()
                if worker is not None:
                    worker.stop()
            self.server_logs(server, tag)
            if worker is not None:
                self.server_logs(worker, f"{tag}-worker")
        base, base_note = self.around("single", base)
        ratio = self.ratio(res.ok_rps, base)
        p99 = res.p("p99")
        checks = [(f"≥ {TARGETS['ingest_ratio']}× baseline",
                   ratio is not None and ratio >= TARGETS["ingest_ratio"]),
                  (f"p99 ≤ {TARGETS['ingest_p99_ms']:g} ms",
                   p99 is not None and p99 <= TARGETS["ingest_p99_ms"])]
        figures = (f"{res.ok_rps:,.0f} req/s, p50 {fmt_ms(res.p('p50'))}, p99 {fmt_ms(p99)}, "
                   f"non-2xx {res.non2xx}")
        if res.errors_total:
            figures += f", socket errors {res.errors_total}"
        cpu = ", ".join(f"{rss.cpu_pct.get(p, 0):.0f}%" for p in watch)
        notes = [f"server CPU {cpu}", *([base_note] if base_note else [])]
        if ingest:
            notes.append("ingest process CPU " +
                         ", ".join(f"{rss.cpu_pct.get(p, 0):.0f}%" for p in ingest))
        row = Row(name, backend, figures, fmt_ratio(ratio), *judge(checks), notes=notes)
        if res.non2xx:
            row.notes.append(f"{res.non2xx} non-2xx responses")
            self.issues.append(f"{tag}: {res.non2xx} non-2xx responses out of {res.requests}")
        self.rows.append(row)
        peak = max((v for v in hwm.values() if v), default=None)
        if not scaleout:
            # The serving process and the ingest process beside it, added up.
            extra = sum(v for v in ingest_hwm.values() if v)
            peak_mib = (peak + extra) / 1024 if peak else None
            sampled = max((rss.peak_mib(p) or 0 for p in watch), default=0)
            parts = f"pid {watch[0]}; sampled VmRSS max {sampled:.0f} MiB"
            if ingest_hwm:
                parts = (f"API process {fmt_mib(peak / 1024 if peak else None)} + ingest "
                         f"process {fmt_mib(extra / 1024)}; " + parts)
            self.rows.append(Row(
                "peak RSS during ingest", backend,
                f"VmHWM {fmt_mib(peak_mib)} ({parts})", "",
                *judge([(f"≤ {TARGETS['rss_mib']:g} MiB",
                         peak_mib is not None and peak_mib <= TARGETS["rss_mib"])])))
        else:
            per = ", ".join(f"{p}: {fmt_mib(v / 1024 if v else None)}" for p, v in hwm.items())
            row.notes.append(f"VmHWM per API process {per}")
            for p, v in ingest_hwm.items():
                row.notes.append(f"ingest process {p}: {fmt_mib(v / 1024 if v else None)}")

    # -- 2: batch ingest ----------------------------------------------------------------------

    def run_batch(self, backend: str) -> None:
        n = self.cfg.batch_size
        log(f"batch on {backend}: POST /alerts with {n} alerts/request, "
            f"{self.cfg.batch_connections} connections, {self.cfg.duration:g}s")
        tag = f"batch-{backend}"
        base = self.measure_baseline("batch")
        with fresh_database(backend) as url:
            cli(url, "migrate")
            key = create_key(url, "monitor")
            server = common.start_crisisflow(tag, url)
            try:
                self.register_pool(server, key)
                env = {"BENCH_BATCH": str(n)}
                if self.cfg.warmup > 0:
                    self.wrk(server, "batch.lua", connections=self.cfg.batch_connections,
                             duration=self.cfg.warmup, timeout_s=60, tag=f"{tag}-warmup",
                             key=key, extra=env, warmup=False)
                before, t0 = count_rows(url, "alert"), time.monotonic()
                ingest = common.ingest_pids(common.group_pids(server.proc.pid))
                # The ingest process, where there is one: it does the writing.
                profiler = self.start_profiler(tag, (ingest or [server.proc.pid])[0]) \
                    if self.cfg.profile else None
                try:
                    with RssSampler([server.proc.pid, *ingest]) as rss:
                        res = self.wrk(server, "batch.lua",
                                       connections=self.cfg.batch_connections,
                                       duration=self.cfg.duration, timeout_s=60, tag=tag,
                                       key=key, extra=env, warmup=False)
                finally:
                    if profiler:
                        self.finish_profiler(tag, profiler)
                after, t1 = count_rows(url, "alert"), time.monotonic()
                # Let the batches still in flight finish before stopping the server, so the
                # stop does not cancel them: wait until nothing new is committed for about one
                # request's latency (bounded).
                window = min(15.0, max(2.0, (res.p("p99") or 10_000.0) / 1000.0))
                settled, quiet_since = after, time.monotonic()
                deadline = quiet_since + 45
                while time.monotonic() < deadline and time.monotonic() - quiet_since < window:
                    time.sleep(0.5)
                    now_count = count_rows(url, "alert")
                    if now_count != settled:
                        settled, quiet_since = now_count, time.monotonic()
            finally:
                server.proc.stop()
            self.server_logs(server, tag)
        stored = (after - before) / (t1 - t0)
        log(f"  {tag}: {after - before} alerts committed in {t1 - t0:.1f}s "
            f"= {stored:,.0f} alerts/s (server-side count)")
        # Few, slow requests: wrk drops the ones in flight at the end, so the committed count
        # is the better figure; with fast requests the two agree.
        rate = stored if res.requests < 50 else res.ok_rps * n
        base, base_note = self.around("batch", base)
        ratio = self.ratio(rate, base)
        figures = (f"{rate:,.0f} alerts/s (wrk: {res.ok_rps * n:,.0f} alerts/s = "
                   f"{res.ok_rps:.2f} req/s; committed: {stored:,.0f} alerts/s), "
                   f"p50 {fmt_ms(res.p('p50'))}, p99 {fmt_ms(res.p('p99'))}, "
                   f"non-2xx {res.non2xx}")
        if res.errors_total:
            figures += f", socket errors {res.errors_total}"
        notes = [f"server CPU {rss.cpu_pct.get(server.proc.pid, 0):.0f}%",
                 *([base_note] if base_note else [])]
        notes += [f"ingest process CPU {rss.cpu_pct.get(p, 0):.0f}%" for p in ingest]
        if res.requests < 50:
            notes.append(f"only {res.requests} requests completed in {res.duration_s:.0f}s, so "
                         "the figure is the server-side count of committed alerts")
        row = Row("batch ingest", backend, figures, fmt_ratio(ratio),
                  *judge([(f"≥ {TARGETS['batch_alerts_s']:,.0f} alerts/s",
                           rate >= TARGETS["batch_alerts_s"])]), notes=notes)
        if res.non2xx:
            self.issues.append(f"{tag}: {res.non2xx} non-2xx responses out of {res.requests}")
        self.rows.append(row)

    # -- 3: escalation ----------------------------------------------------------------------

    def run_escalation(self, backend: str) -> None:
        from bench import escalation

        rate, duration = self.cfg.escalation_rate, self.cfg.duration
        log(f"escalation on {backend}: {rate:g} new alerts/s for {duration:g}s, each a new "
            f"incident; 202 -> incident.detected webhook")
        tag = f"escalation-{backend}"
        with fresh_database(backend) as url:
            cli(url, "migrate")
            monitor = create_key(url, "monitor")
            admin = create_key(url, "admin")
            server = common.start_crisisflow(tag, url)
            try:
                res = asyncio.run(escalation.run(server.base, monitor, admin, rate=rate,
                                                 duration=duration, nonce=self.nonce("e")))
            finally:
                server.proc.stop()
            self.server_logs(server, tag)
        log(f"  {tag}: {json.dumps(res)}")
        p99 = res["p99_ms"]
        figures = (f"p50 {fmt_ms(res['p50_ms'])}, p99 {fmt_ms(p99)} (max {fmt_ms(res['max_ms'])})"
                   f"; {res['matched']}/{res['sent']} matched; sent at "
                   f"{res['rate_achieved']:.0f}/s, accepted at {res['accept_rate']:.0f}/s; "
                   f"the 202 itself: p50 {fmt_ms(res['ack_p50_ms'])}, "
                   f"p99 {fmt_ms(res['ack_p99_ms'])}")
        checks = [(f"p99 ≤ {TARGETS['escalation_p99_ms']:g} ms",
                   p99 is not None and p99 <= TARGETS["escalation_p99_ms"]
                   and res["missing"] == 0)]
        row = Row("escalation latency", backend, figures, "", *judge(checks))
        if res["missing"]:
            row.notes.append(f"{res['missing']} accepted alerts never produced a webhook")
        other = {k: v for k, v in res["statuses"].items() if k != 202}
        if other or res["client_errors"]:
            what = ", ".join([*(f"HTTP {k}: {v}" for k, v in other.items()),
                              *(f"{k}: {v}" for k, v in res["client_error_types"].items())])
            row.notes.append(f"alerts not accepted: {what}")
            self.issues.append(f"{tag}: alerts not accepted ({what}); the client waits up to "
                               "60 s for a 202")
        if res["early"]:
            row.notes.append(f"{res['early']} webhooks arrived before their 202 (counted 0 ms)")
        self.rows.append(row)

    # -- 4: reads ---------------------------------------------------------------------------

    def run_reads(self, backend: str) -> None:
        from bench import seed

        count = self.cfg.read_counts[backend]
        log(f"reads on {backend}: seeding {count:,} incidents")
        tag = f"reads-{backend}"
        with fresh_database(backend) as url:
            cli(url, "migrate")
            cli(url, "agencies", "seed")
            stats = seed.seed(url, count, progress=lambda m: log("  " + m))
            log(f"  seeded: {json.dumps(stats)}")
            if backend == "postgresql":
                common.checkpoint_postgres()
            key = create_key(url, "viewer")
            server = common.start_crisisflow(tag, url)
            results: dict[str, WrkResult] = {}
            try:
                for name, path in READ_PATHS.items():
                    status, body = http_json("GET", server.base + path, key=key)
                    items = len(body.get("items", [])) if isinstance(body, dict) else 0
                    if status != 200 or items == 0:
                        raise BenchError(f"GET {path}: HTTP {status}, {items} items")
                    profiler = self.start_profiler(f"{tag}-{name}", server.proc.pid) \
                        if self.cfg.profile else None
                    try:
                        results[name] = self.wrk(server, "reads.lua",
                                                 connections=self.cfg.read_connections,
                                                 duration=self.cfg.duration, timeout_s=10,
                                                 tag=f"{tag}-{name}", key=key, path=path,
                                                 extra={"BENCH_READ_PATH": path})
                    finally:
                        if profiler:
                            self.finish_profiler(f"{tag}-{name}", profiler)
            finally:
                server.proc.stop()
            self.server_logs(server, tag)
        for name, res in results.items():
            p95 = res.p("p95")
            label = "state+severity" if name == "filters" else "q=tin gia"
            figures = (f"p50 {fmt_ms(res.p('p50'))}, p95 {fmt_ms(p95)}, {res.ok_rps:,.0f} "
                       f"req/s (c={self.cfg.read_connections}), non-2xx {res.non2xx}")
            self.rows.append(Row(f"reads {label} ({count:,})", backend, figures,
                                 fmt_ratio(self.ratio(res.ok_rps,
                                                      self.latest_baseline("single"))),
                                 *judge([(f"p95 ≤ {TARGETS['reads_p95_ms']:g} ms",
                                          p95 is not None and p95 <= TARGETS["reads_p95_ms"])])))
            if res.non2xx:
                self.issues.append(f"{tag}-{name}: {res.non2xx} non-2xx of {res.requests}")

    # -- profiling --------------------------------------------------------------------------

    def start_profiler(self, tag: str, pid: int) -> list[tuple[common.Proc, Path]] | None:
        spy = shutil.which("py-spy") or str(common.BIN / "py-spy")
        if not Path(spy).exists():
            log("  --profile: py-spy is not installed (pip install py-spy); skipping")
            return None
        seconds = str(int(self.cfg.warmup + self.cfg.duration))
        started = []
        for fmt, suffix in (("raw", "txt"), ("flamegraph", "svg")):
            path = RESULTS / f"{tag}.{suffix}"
            argv = [spy, "record", "--pid", str(pid), "--duration", seconds, "--rate", "100",
                    "--nonblocking", "--format", fmt, "--output", str(path)]
            started.append((common.Proc(f"{tag}-py-spy-{fmt}", argv, dict(os.environ)), path))
        return started

    def finish_profiler(self, tag: str, started: list[tuple[common.Proc, Path]]) -> None:
        for proc, _ in started:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(timeout=15)
            proc.stop()
        raw = started[0][1]
        if raw.exists():
            summary = summarise_profile(raw)
            (RESULTS / f"{tag}.profile.txt").write_text(summary)
            out(summary)
        else:
            log(f"  py-spy wrote nothing; see {started[0][0].stderr_path}")
        self.issues.append(f"{tag}: measured under py-spy (--profile); figures are lower")


def count_rows(url: str, table: str) -> int:
    import sqlalchemy as sa

    from app.core.db import sync_url

    engine = sa.create_engine(sync_url(url))
    try:
        with engine.connect() as conn:
            return int(conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one())
    finally:
        engine.dispose()


def summarise_profile(path: Path, top: int = 15) -> str:
    """Where the server's CPU samples went, from py-spy's collapsed stacks (`--format raw`)."""
    self_t: dict[str, int] = {}
    app_fn: dict[str, int] = {}
    app_line: dict[str, int] = {}
    packages: dict[str, int] = {}
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [_frame(f) for f in stack.split(";")]
        leaf = frames[-1]
        self_t[leaf[0]] = self_t.get(leaf[0], 0) + n
        fns, lines, pkgs = set(), set(), set()
        for fn, where, pkg in frames:
            if pkg == "crisisflow" and "cli.py" not in where and not where.startswith(
                    "crisisflow:"):
                fns.add(fn)
                lines.add(f"{where} in {fn.split(' (')[0]}")
            pkgs.add(pkg)
        for key in fns:
            app_fn[key] = app_fn.get(key, 0) + n
        for key in lines:
            app_line[key] = app_line.get(key, 0) + n
        for key in pkgs:
            packages[key] = packages.get(key, 0) + n
    if not total:
        return f"profile {path}: no samples"

    def block(title: str, data: dict[str, int], limit: int = top) -> list[str]:
        rows = sorted(data.items(), key=lambda kv: -kv[1])[:limit]
        return [f"  {title}:"] + [f"    {100 * v / total:5.1f}%  {k}" for k, v in rows]

    out_lines = [f"profile {path.name}: {total} samples of the serving process (CPU only, "
                 "idle excluded; native code is charged to the Python frame that called it)"]
    out_lines += block("self time by function", self_t)
    out_lines += block("inclusive time by package (a sample counts once per package)", packages,
                       12)
    out_lines += block("inclusive time, crisisflow functions", app_fn)
    out_lines += block("inclusive time, crisisflow lines", app_line)
    return "\n".join(out_lines)


_OURS = ("app", "workflows", "notifiers", "bench")


def _frame(text: str) -> tuple[str, str, str]:
    """py-spy frame "function (pkg/file.py:123)" -> ("function (pkg/file.py)",
    "pkg/file.py:123", package); py-spy already shortens paths to the import root."""
    name, _, where = text.partition(" (")
    where = where.rstrip(")")
    file, _, lineno = where.rpartition(":")
    if not file:
        file, lineno = where, ""
    for marker in ("site-packages/", "lib/python3.11/"):  # in case a path stays absolute
        if marker in file:
            file = file.split(marker, 1)[1]
    top = file.split("/", 1)[0].removesuffix(".py")
    if file == "crisisflow":  # the console script
        package = "uvicorn"
    elif top in _OURS:
        package = "crisisflow"
    elif top in sys.stdlib_module_names or top.startswith("<frozen"):
        package = "stdlib"
    else:
        package = top
    if name == "Runner.run":
        name += " [event loop: uvloop's C code]"
    return f"{name} ({file})", f"{file}:{lineno}", package


# -- formatting and the table ------------------------------------------------------------------

def fmt_ms(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.1f} ms" if value < 100 else f"{value:,.0f} ms"


def fmt_mib(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f} MiB"


def fmt_ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}×"


def judge(checks: list[tuple[str, bool]]) -> tuple[str, str]:
    target = "; ".join(label for label, _ in checks)
    missed = [label for label, ok in checks if not ok]
    return target, ("met" if not missed else "MISSED: " + "; ".join(missed))


def table(rows: list[Row]) -> str:
    head = ["benchmark", "backend", "figures", "vs baseline", "target", "result"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        figures = r.figures + (f" [{'; '.join(r.notes)}]" if r.notes else "")
        cells = [r.bench, r.backend, figures, r.ratio, r.target, r.result]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(lines)


def machine() -> str:
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    nproc = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    pg = ""
    with contextlib.suppress(Exception):
        import psycopg

        with psycopg.connect(common.PG_ADMIN_URL, connect_timeout=3) as conn:
            pg = conn.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
            # What the benchmark's databases compare text by: ids and keys compare "C"
            # (migration 0013), the rest by this.
            collate = conn.execute("SELECT datcollate FROM pg_database "
                                   "WHERE datname = 'template1'").fetchone()[0]  # type: ignore[index]
            pg = f"{pg}, databases collated {collate}"
    wrk = ""
    with contextlib.suppress(Exception):
        wrk = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split("[")[0]
    return (f"{dt.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}; nproc {nproc}; {cpu}; "
            f"Python {platform.python_version()}; PostgreSQL {pg or 'n/a'}; {wrk.strip()}")


README_START = "<!-- results:start -->"
README_END = "<!-- results:end -->"


def write_readme(block: str) -> None:
    path = common.BENCH_DIR / "README.md"
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    if README_START in text and README_END in text:
        head, rest = text.split(README_START, 1)
        _, tail = rest.split(README_END, 1)
        text = f"{head}{README_START}\n{block}\n{README_END}{tail}"
    else:
        text += f"\n## Latest results\n\n{README_START}\n{block}\n{README_END}\n"
    path.write_text(text, encoding="utf-8")


# -- main ------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    p.add_argument("--only", action="append", default=[],
                   help=f"benchmarks to run (comma-separated or repeated): {', '.join(BENCHMARKS)}"
                        " (memory is measured with ingest)")
    p.add_argument("--backend", action="append", default=[], help="sqlite, postgresql")
    p.add_argument("--duration", type=float, default=20.0, help="seconds per measured run")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of unmeasured warm-up")
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch-connections", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=1000)
    p.add_argument("--read-connections", type=int, default=8)
    p.add_argument("--escalation-rate", type=float, default=100.0)
    p.add_argument("--sqlite-incidents", type=int, default=200_000)
    p.add_argument("--postgresql-incidents", type=int, default=1_000_000)
    p.add_argument("--no-baseline", action="store_true", help="skip the baseline (no ratios)")
    p.add_argument("--profile", action="store_true",
                   help="record the ingest server with py-spy (bench/results/ingest-*.svg, "
                        "*.profile.txt); figures measured this way are lower")
    p.add_argument("--readme", choices=("auto", "yes", "no"), default="auto",
                   help="copy the table into bench/README.md (auto: only for a full run)")
    args = p.parse_args(argv)
    only = [x.strip() for item in args.only for x in item.split(",") if x.strip()]
    only = ["ingest" if x in ("memory", "rss") else x for x in only]
    for x in only:
        if x not in BENCHMARKS:
            p.error(f"unknown benchmark {x!r}; choose from {', '.join(BENCHMARKS)}")
    backends = [x.strip() for item in args.backend for x in item.split(",") if x.strip()]
    backends = ["postgresql" if b in ("pg", "postgres") else b for b in backends]
    for b in backends:
        if b not in BACKENDS:
            p.error(f"unknown backend {b!r}; choose from {', '.join(BACKENDS)}")
    args.full = not only and not backends and args.duration == 20.0 and not args.profile
    args.only = only or list(BENCHMARKS)
    args.backends = backends or list(BACKENDS)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = Config(duration=args.duration, warmup=args.warmup, connections=args.connections,
                 threads=args.threads, batch_connections=args.batch_connections,
                 batch_size=args.batch_size, read_connections=args.read_connections,
                 escalation_rate=args.escalation_rate, profile=args.profile,
                 baseline=not args.no_baseline,
                 read_counts={"sqlite": args.sqlite_incidents,
                              "postgresql": args.postgresql_incidents})
    RESULTS.mkdir(parents=True, exist_ok=True)
    if LOGS.exists():
        shutil.rmtree(LOGS, ignore_errors=True)
    out.open(RESULTS / "latest.txt")
    common.install_signal_handlers()
    started = time.monotonic()
    run = Run(cfg)
    status = 0
    try:
        info = machine()
        out(f"crisisflow benchmarks — {info}")
        out(f"command: {' '.join([Path(sys.executable).name, '-m', 'bench.run', *sys.argv[1:]])}")
        common.ensure_wrk()
        backends = list(args.backends)
        if "postgresql" in backends:
            reason = common.postgres_available()
            if reason:
                log(f"PostgreSQL unavailable, skipping it: {reason}")
                run.issues.append(f"PostgreSQL skipped: {reason}")
                backends.remove("postgresql")
        steps: list[tuple[str, str, Callable[[], None]]] = []
        for backend in backends:
            for bench in args.only:
                if bench == "scaleout":
                    continue
                method: Callable[[str], None] = {
                    "ingest": run.run_ingest, "batch": run.run_batch,
                    "escalation": run.run_escalation, "reads": run.run_reads}[bench]
                steps.append((bench, backend, functools.partial(method, backend)))
        if "scaleout" in args.only:
            if "postgresql" in backends:
                steps.append(("scaleout", "postgresql",
                              lambda: run.run_ingest("postgresql", scaleout=True)))
            else:
                run.issues.append("scaleout needs PostgreSQL: not run")
        for bench, backend, step in steps:
            t0 = time.monotonic()
            load = common.ForeignLoad()
            try:
                step()
            except KeyboardInterrupt:
                raise
            except Exception as exc:  # one failure must not stop the others
                status = 1
                detail = str(exc) if isinstance(exc, BenchError) else traceback.format_exc()
                log(f"FAILED {bench} on {backend}: {detail}")
                run.rows.append(Row(bench, backend, f"ERROR: {str(exc).splitlines()[0][:160]}",
                                    result="not measured"))
                run.issues.append(f"{bench}/{backend} failed: {str(exc)[:500]}")
            finally:
                common.stop_all()
            foreign, busiest = load.finish()
            log(f"  ({bench} on {backend} took {time.monotonic() - t0:.0f}s; other processes "
                f"on the machine used {foreign:.0f}% CPU{': ' if busiest else ''}"
                f"{', '.join(busiest)})")
            if foreign >= 20:
                run.issues.append(f"{bench}/{backend}: other processes (not the harness, not "
                                  f"PostgreSQL) used {foreign:.0f}% CPU of 200% meanwhile "
                                  f"({', '.join(busiest)}): figures are pessimistic")
    except KeyboardInterrupt:
        status = 130
        log("interrupted; cleaning up")
    finally:
        common.stop_all()
        elapsed = time.monotonic() - started
        block = [f"Measured {info if 'info' in locals() else ''}; took {elapsed / 60:.1f} min.",
                 "", table(run.baseline_rows() + run.rows)]
        if run.issues:
            block += ["", "Notes and problems seen:"] + [f"- {i}" for i in run.issues]
        text = "\n".join(block)
        out("")
        out(text)
        out.close()
        if args.readme == "yes" or (args.readme == "auto" and args.full and status != 130):
            write_readme(text)
            print("table copied to bench/README.md")
    return status  # missed targets are reported in the table, not in the exit status


if __name__ == "__main__":
    sys.exit(main())
