"""Shared machinery: subprocesses (always cleaned up), fresh databases, wrk, API keys, /proc.

Everything here is bounded: every wait has a timeout, every process is started in its own
session (process group) and killed as a group, every temporary database is dropped.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
RESULTS = BENCH_DIR / "results"
LOGS = RESULTS / "logs"
BIN = Path(sys.executable).parent
HOST = "127.0.0.1"
PG_ADMIN_URL = os.environ.get("BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


class BenchError(Exception):
    """A benchmark could not run (the message says why); the harness goes on with the next."""


# -- output: everything printed also goes to bench/results/latest.txt ---------------------------

class Output:
    def __init__(self) -> None:
        self._file: Any = None
        self._lock = threading.Lock()

    def open(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = path.open("w", encoding="utf-8")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __call__(self, *parts: Any) -> None:
        text = " ".join(str(p) for p in parts)
        with self._lock:
            print(text, flush=True)
            if self._file is not None:
                self._file.write(text + "\n")
                self._file.flush()


out = Output()


def log(*parts: Any) -> None:
    out(time.strftime("%H:%M:%S"), *parts)


# -- processes ---------------------------------------------------------------------------------

_LIVE: list[Proc] = []


class Proc:
    """A subprocess in its own process group, stdout/stderr to files under bench/results/logs."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], *,
                 cwd: Path = ROOT) -> None:
        LOGS.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.argv = argv
        self.stdout_path = LOGS / f"{name}.stdout.log"
        self.stderr_path = LOGS / f"{name}.stderr.log"
        self._out = self.stdout_path.open("wb")
        self._err = self.stderr_path.open("wb")
        self.popen = subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                                      stdout=self._out, stderr=self._err,
                                      start_new_session=True)
        self.pid = self.popen.pid
        _LIVE.append(self)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def _signal_group(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)

    def stop(self, grace: float = 10.0) -> int | None:
        """SIGINT the group (uvicorn's graceful stop), then SIGTERM, then SIGKILL."""
        try:
            for sig, wait in ((signal.SIGINT, grace), (signal.SIGTERM, 5.0),
                              (signal.SIGKILL, 5.0)):
                if self.popen.poll() is not None:
                    break
                self._signal_group(sig)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.popen.wait(timeout=wait)
            # Children (uvicorn --workers N) may outlive the parent: make sure of the group.
            self._signal_group(signal.SIGKILL)
        finally:
            self._out.close()
            self._err.close()
            if self in _LIVE:
                _LIVE.remove(self)
        return self.popen.returncode

    def stderr_text(self) -> str:
        try:
            return self.stderr_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""


def stop_all() -> None:
    for proc in list(_LIVE):
        with contextlib.suppress(Exception):
            proc.stop(grace=3.0)


def install_signal_handlers() -> None:
    def handler(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGHUP, handler)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float, proc: Proc | None = None) -> None:
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if proc is not None and not proc.alive():
            tail = "\n".join(proc.stderr_text().splitlines()[-15:])
            raise BenchError(f"{proc.name} exited with {proc.popen.returncode}:\n{tail}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
                last = f"HTTP {resp.status}"
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}"
        except (OSError, urllib.error.URLError) as exc:
            last = str(exc)
        time.sleep(0.2)
    raise BenchError(f"{url} not ready after {timeout:.0f}s ({last})")


def http_json(method: str, url: str, body: Any = None, key: str | None = None,
              timeout: float = 60.0) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body, ensure_ascii=False).encode()
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if key:
        req.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
            return resp.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            return exc.code, json.loads(raw)
        except ValueError:
            return exc.code, raw.decode(errors="replace")


# -- crisisflow ----------------------------------------------------------------------------------

def crisisflow_env(db_url: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "CRISISFLOW_DATABASE_URL": db_url,
        "CRISISFLOW_ACCESS_LOG": "false",
        "CRISISFLOW_LOG_LEVEL": "WARNING",
        "CRISISFLOW_INGEST_RATE_LIMIT": "0",
        "PYTHONUNBUFFERED": "1",
    })
    return env


def cli(db_url: str, *args: str, timeout: float = 120.0) -> str:
    """Run `crisisflow ARGS` against db_url; returns stdout, raises BenchError on failure."""
    argv = [str(BIN / "crisisflow"), *args]
    try:
        done = subprocess.run(argv, env=crisisflow_env(db_url), cwd=ROOT, capture_output=True,
                              text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise BenchError(f"crisisflow {' '.join(args)} timed out after {timeout:.0f}s") from None
    if done.returncode != 0:
        raise BenchError(f"crisisflow {' '.join(args)} failed ({done.returncode}): "
                         f"{done.stderr.strip()[-800:]}")
    return done.stdout


def create_key(db_url: str, role: str, name: str | None = None) -> str:
    stdout = cli(db_url, "keys", "create", "--name", name or f"bench-{role}", "--role", role,
                 "--json")
    lines = [ln for ln in stdout.splitlines() if ln.strip()]
    try:
        return str(json.loads(lines[-1])["key"])
    except (IndexError, ValueError, KeyError):
        raise BenchError(f"keys create --json printed {stdout!r}") from None


@dataclass
class Server:
    proc: Proc
    port: int
    kind: str

    @property
    def base(self) -> str:
        return f"http://{HOST}:{self.port}"


def start_crisisflow(name: str, db_url: str, *, workers: int = 1, no_worker: bool = False,
                     ready_timeout: float = 120.0) -> Server:
    port = free_port()
    argv = [str(BIN / "crisisflow"), "serve", "--host", HOST, "--port", str(port),
            "--workers", str(workers)]
    if no_worker:
        argv.append("--no-worker")
    proc = Proc(name, argv, crisisflow_env(db_url))
    try:
        wait_http(f"http://{HOST}:{port}/readyz", ready_timeout, proc)
    except BaseException:
        proc.stop()
        raise
    return Server(proc, port, "crisisflow")


def start_worker(name: str, db_url: str) -> Proc:
    return Proc(name, [str(BIN / "crisisflow"), "worker"], crisisflow_env(db_url))


def start_baseline(name: str) -> Server:
    port = free_port()
    argv = [sys.executable, "-m", "uvicorn", "bench.baseline_app:app", "--host", HOST,
            "--port", str(port), "--workers", "1", "--no-access-log", "--log-level", "warning"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = Proc(name, argv, env)
    try:
        wait_http(f"http://{HOST}:{port}/healthz", 60, proc)
    except BaseException:
        proc.stop()
        raise
    return Server(proc, port, "baseline")


def server_log_summary(proc: Proc, limit: int = 4) -> dict[str, Any]:
    """Counts of warning/error/critical lines and tracebacks in a server's stderr."""
    counts: dict[str, int] = {}
    samples: dict[str, int] = {}
    tracebacks = 0
    for line in proc.stderr_text().splitlines():
        line = line.strip()
        if not line:
            continue
        level, msg = None, line
        if line.startswith("{"):
            try:
                entry = json.loads(line)
                level = str(entry.get("level", "")).lower()
                msg = f"{entry.get('logger', '')}: {entry.get('msg', '')}"
                if entry.get("exc"):
                    tracebacks += 1
                    msg += " | " + str(entry["exc"]).strip().splitlines()[-1][:200]
            except ValueError:
                pass
        elif line.startswith("Traceback"):
            tracebacks += 1
            level = "error"
        elif re.match(r"^(ERROR|WARNING|CRITICAL)", line):
            level = line.split(":", 1)[0].lower()
        if level in ("warning", "error", "critical"):
            counts[level] = counts.get(level, 0) + 1
            key = f"[{level}] {' '.join(msg.split())[:300]}"
            samples[key] = samples.get(key, 0) + 1
    top = sorted(samples.items(), key=lambda kv: -kv[1])[:limit]
    return {"counts": counts, "tracebacks": tracebacks,
            "samples": [f"{n}x {text}{_known_cause(text)}" for text, n in top],
            "path": str(proc.stderr_path)}


KNOWN_CAUSES = {
    "ClientDisconnect": "a client closed its connection before the request body was read; "
                        "wrk does this to requests still queued when a run ends",
    "timeout graceful shutdown exceeded": "requests still running when the harness stopped "
                                          "the server (uvicorn's 5 s graceful shutdown)",
}


def _known_cause(text: str) -> str:
    for needle, cause in KNOWN_CAUSES.items():
        if needle in text:
            return f" ({cause})"
    return ""


# -- databases -----------------------------------------------------------------------------------

_DB_SEQ = 0


@contextlib.contextmanager
def fresh_database(backend: str) -> Iterator[str]:
    """A fresh, empty database URL for `sqlite` or `postgresql`, removed afterwards."""
    global _DB_SEQ
    _DB_SEQ += 1
    if backend == "sqlite":
        tmp = Path(tempfile.mkdtemp(prefix="crisisflow-bench-"))
        try:
            yield f"sqlite:///{tmp / 'bench.db'}"
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return
    if backend != "postgresql":
        raise ValueError(backend)
    import psycopg

    name = f"bench_{os.getpid()}_{_DB_SEQ}"
    try:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.Error as exc:
        raise BenchError(f"PostgreSQL at {PG_ADMIN_URL}: {exc}".strip()) from None
    checkpoint_postgres()
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    try:
        yield f"{base.replace('postgresql://', 'postgresql+psycopg://', 1)}/{name}"
    finally:
        drop_pg_database(name)


def checkpoint_postgres() -> None:
    """Write out what earlier runs left dirty, so a benchmark does not pay for the checkpoint
    of the one before it (the server checkpoints on its own schedule, mid-run)."""
    import psycopg

    try:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5) as conn:
            conn.execute("CHECKPOINT")
    except psycopg.Error as exc:
        log(f"  CHECKPOINT failed ({str(exc).strip()}); measuring anyway")


def drop_pg_database(name: str) -> None:
    import psycopg

    for _ in range(3):
        try:
            with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            return
        except psycopg.Error as exc:
            log(f"warning: could not drop database {name}: {exc}")
            time.sleep(1)


def postgres_available() -> str | None:
    """None when the admin URL answers, else the reason."""
    try:
        import psycopg

        with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5) as conn:
            conn.execute("SELECT 1")
        return None
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}".strip()


# -- /proc ---------------------------------------------------------------------------------------

def proc_status(pid: int) -> dict[str, str]:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)


def kib(value: str | None) -> int | None:
    if not value:
        return None
    return int(value.strip().split()[0])


def cpu_seconds(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def group_pids(pgid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid:
            pids.append(int(entry.name))
    return sorted(pids)


def ingest_pids(candidates: list[int]) -> list[int]:
    """The ingest process that `crisisflow serve` starts beside its API processes (by name)."""
    found = []
    for pid in candidates:
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/comm").read_text().startswith("crisisflow-ing"):
                found.append(pid)
    return found


def listening_pids(port: int, candidates: list[int]) -> list[int]:
    """Which of `candidates` hold the listening socket on 127.0.0.1:port (by socket inode)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                parts = line.split()
                local, state, inode = parts[1], parts[3], parts[9]
                if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                    inodes.add(f"socket:[{inode}]")
    found = []
    for pid in candidates:
        fd_dir = Path(f"/proc/{pid}/fd")
        with contextlib.suppress(OSError):
            for fd in fd_dir.iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) in inodes:
                        found.append(pid)
                        break
    return found


class RssSampler:
    """Samples VmRSS of some pids every `interval` s in a thread; `peak` in MiB."""

    def __init__(self, pids: list[int], interval: float = 0.25) -> None:
        self.pids = pids
        self.interval = interval
        self.samples: dict[int, list[int]] = {p: [] for p in pids}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.cpu_start = {p: cpu_seconds(p) for p in pids}
        self.t_start = time.monotonic()
        self.cpu_pct: dict[int, float] = {}

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            for pid in self.pids:
                rss = kib(proc_status(pid).get("VmRSS"))
                if rss is not None:
                    self.samples[pid].append(rss)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        elapsed = max(time.monotonic() - self.t_start, 1e-6)
        for pid in self.pids:
            start, end = self.cpu_start.get(pid), cpu_seconds(pid)
            if start is not None and end is not None:
                self.cpu_pct[pid] = 100.0 * (end - start) / elapsed

    def peak_mib(self, pid: int) -> float | None:
        values = self.samples.get(pid) or []
        return max(values) / 1024.0 if values else None


# -- wrk -----------------------------------------------------------------------------------------

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60000.0, "h": 3600000.0}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([0-9.]+)(us|ms|s|m|h)", text.strip())
    if not m:
        raise ValueError(text)
    return float(m.group(1)) * _UNITS[m.group(2)]


@dataclass
class WrkResult:
    requests: int = 0
    duration_s: float = 0.0
    rps: float = 0.0
    non2xx: int = 0
    socket_errors: dict[str, int] = field(default_factory=dict)
    dist_ms: dict[str, float] = field(default_factory=dict)  # from --latency text
    pct_ms: dict[str, float] = field(default_factory=dict)  # from done() (incl. p95)
    text: str = ""

    def p(self, pct: str) -> float | None:
        """Latency percentile in ms: wrk's --latency distribution when it prints that one,
        else the done() callback's."""
        return self.dist_ms.get(pct, self.pct_ms.get(pct))

    @property
    def ok_rps(self) -> float:
        """2xx/3xx responses per second (wrk's Requests/sec counts errors too)."""
        if not self.duration_s:
            return 0.0
        return (self.requests - self.non2xx) / self.duration_s

    @property
    def errors_total(self) -> int:
        return sum(self.socket_errors.values())


def parse_wrk(text: str) -> WrkResult:
    r = WrkResult(text=text)
    in_dist = False
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("Latency Distribution"):
            in_dist = True
            continue
        if in_dist:
            m = re.fullmatch(r"([0-9.]+)%\s+(\S+)", s)
            if m:
                r.dist_ms[f"p{float(m.group(1)):g}"] = _ms(m.group(2))
                continue
            in_dist = False
        m = re.match(r"(\d+) requests in ([0-9.]+)(us|ms|s|m|h)", s)
        if m:
            r.requests = int(m.group(1))
            r.duration_s = _ms(m.group(2) + m.group(3)) / 1000.0
        m = re.match(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", s)
        if m:
            r.socket_errors = dict(zip(("connect", "read", "write", "timeout"),
                                       map(int, m.groups()), strict=True))
        m = re.match(r"Non-2xx or 3xx responses: (\d+)", s)
        if m:
            r.non2xx = int(m.group(1))
        m = re.match(r"Requests/sec:\s+([0-9.]+)", s)
        if m:
            r.rps = float(m.group(1))
        if s.startswith("BENCHJSON "):
            data = json.loads(s[len("BENCHJSON "):])
            r.pct_ms = {k[:-3]: v / 1000.0 for k, v in data.items()
                        if k.startswith("p") and k.endswith("_us")}
            r.non2xx = max(r.non2xx, int(data.get("status", 0)))
            if not r.requests:
                r.requests = int(data["requests"])
                r.duration_s = data["duration_us"] / 1e6
    if not r.rps and r.duration_s:
        r.rps = r.requests / r.duration_s
    if r.requests == 0:  # wrk prints zeros for an empty histogram
        r.dist_ms, r.pct_ms = {}, {}
    return r


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    log("wrk is missing: apt-get install -y wrk")
    cmd = ["apt-get", "install", "-y", "wrk"]
    if os.geteuid() != 0 and shutil.which("sudo"):
        cmd = ["sudo", "-n", *cmd]
    try:
        subprocess.run(cmd, check=True, timeout=300, stdin=subprocess.DEVNULL,
                       env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
    except (subprocess.SubprocessError, OSError) as exc:
        raise BenchError(f"could not install wrk: {exc}") from None
    found = shutil.which("wrk")
    if not found:
        raise BenchError("wrk still missing after apt-get install")
    return found


def run_wrk(url: str, script: str, *, threads: int, connections: int, duration: float,
            timeout_s: float, env: dict[str, str], tag: str) -> WrkResult:
    wrk = ensure_wrk()
    argv = [wrk, f"-t{threads}", f"-c{connections}", f"-d{max(1, round(duration))}s",
            f"--timeout={int(timeout_s)}s", "--latency", "-s", str(BENCH_DIR / script), url]
    full_env = dict(os.environ, BENCH_LUA_DIR=str(BENCH_DIR), **env)
    try:
        done = subprocess.run(argv, env=full_env, capture_output=True, text=True,
                              timeout=duration + timeout_s + 30, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise BenchError(f"wrk ({tag}) did not finish in time") from None
    text = done.stdout + (("\n" + done.stderr) if done.stderr.strip() else "")
    LOGS.mkdir(parents=True, exist_ok=True)
    (LOGS / f"{tag}.wrk.txt").write_text(" ".join(argv) + "\n\n" + text)
    if done.returncode != 0 or "requests in" not in done.stdout:
        raise BenchError(f"wrk ({tag}) failed ({done.returncode}): {text.strip()[-600:]}")
    return parse_wrk(done.stdout)


# -- other load on the machine -------------------------------------------------------------------

def _proc_table() -> dict[int, tuple[int, str, int]]:
    """pid -> (ppid, comm, utime+stime ticks) for every process."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "stat").read_text()
        except OSError:
            continue
        comm = raw[raw.find("(") + 1:raw.rfind(")")]
        fields = raw.rsplit(")", 1)[1].split()
        table[int(entry.name)] = (int(fields[1]), comm, int(fields[11]) + int(fields[12]))
    return table


def _foreign(table: dict[int, tuple[int, str, int]], root: int) -> dict[int, tuple[str, int]]:
    """Processes that are neither ours (descendants of `root`) nor PostgreSQL's."""
    ours: dict[int, bool] = {}

    def is_ours(pid: int) -> bool:
        seen = []
        while pid > 1 and pid not in ours:
            if pid == root:
                ours[pid] = True
                break
            seen.append(pid)
            pid = table.get(pid, (0, "", 0))[0]
        result = ours.get(pid, False)
        for p in seen:
            ours[p] = result
        return result

    return {pid: (comm, ticks) for pid, (_, comm, ticks) in table.items()
            if not is_ours(pid) and comm not in ("postgres", "postmaster")}


class ForeignLoad:
    """CPU used by other processes on the machine (not ours, not PostgreSQL) over a span."""

    def __init__(self) -> None:
        self.root = os.getpid()
        self.t0 = time.monotonic()
        self.before = _foreign(_proc_table(), self.root)

    def finish(self) -> tuple[float, list[str]]:
        """(total CPU % of other processes, up to 3 of the busiest as 'comm pid: N%')."""
        after = _foreign(_proc_table(), self.root)
        elapsed = max(time.monotonic() - self.t0, 1e-6)
        hz = os.sysconf("SC_CLK_TCK")
        used = []
        for pid, (comm, ticks) in after.items():
            start = self.before.get(pid, (comm, 0))[1]
            pct = 100.0 * (ticks - start) / hz / elapsed
            if pct > 0.5:
                used.append((pct, f"{comm} {pid}: {pct:.0f}%"))
        used.sort(reverse=True)
        return sum(p for p, _ in used), [label for _, label in used[:3]]
