"""Fast seeding of incidents for the read benchmarks (not through the API).

    python -m bench.seed --url sqlite:///tmp/x.db --count 200000
    python -m bench.seed --url postgresql+psycopg://postgres@127.0.0.1/bench --count 1000000

The database must be migrated (`crisisflow migrate`). Rows are valid incidents: every NOT NULL
column of `incident` is filled (checked against the live schema, so a new column stops the
seeder with a clear message instead of seeding half a row), `search_text` is
`app.incidents.search.search_text(title, description)` over Vietnamese titles with
diacritics, `reference` is `INC-YYYY-NNNNNN` numbered in creation order per year (and
`reference_counter` is moved past the seeded numbers), and `incident_agency` holds the lead
and affected agencies. Not seeded: timeline entries, deadlines, alerts (an incident's
`timeline_seq` is 0).

Rows are generated in worker processes (2 by default), in chunks, in creation order.
SQLite: executemany on the sync engine's connection, every value passed through the bind
processor SQLAlchemy uses for that column (so it is stored exactly as the app stores it), in
one transaction; `incident_fts` is filled with FTS5's 'rebuild' while the insert trigger is set
aside, then the trigger is put back from its own stored SQL, and the seeder checks that the FTS
index finds exactly the rows a LIKE scan finds. PostgreSQL: COPY via psycopg, with the
secondary indexes of the two tables dropped for the load and recreated from their own
definitions afterwards (one transaction). Both: ANALYZE.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from bisect import bisect
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import accumulate
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import sqlalchemy as sa
import uuid_utils

from app.incidents.search import fold, search_text

CHUNK = 20_000

SUBJECTS = [
    "giá xăng dầu", "bảo hiểm xã hội", "học phí đại học", "dịch sốt xuất huyết",
    "lũ lụt miền Trung", "thuế thu nhập cá nhân", "tiền lương cơ sở", "sáp nhập tỉnh",
    "vắc xin sởi", "giá điện", "cao tốc Bắc - Nam", "an toàn thực phẩm", "thu hồi đất",
    "thi tốt nghiệp THPT", "căn cước công dân", "giá vàng", "lãi suất ngân hàng",
    "sạt lở đất", "bệnh viện tuyến trung ương", "chính sách nhà ở xã hội",
    "cải cách thủ tục hành chính", "đường sắt tốc độ cao", "xuất khẩu gạo", "ô nhiễm không khí",
    "giao thông đô thị", "phí trước bạ", "hộ chiếu", "chuyển đổi số", "lương hưu",
    "khám chữa bệnh bảo hiểm y tế", "tuyển sinh lớp 10", "thiên tai", "cháy rừng",
    "bầu cử", "giá thuốc", "điện mặt trời", "quy hoạch đô thị", "nước sạch", "hàng giả",
    "lừa đảo trực tuyến",
]
PLACES = ["", "", "", " tại Hà Nội", " tại TP. Hồ Chí Minh", " tại Đà Nẵng", " ở Nghệ An",
          " ở Quảng Ninh", " tại Cần Thơ", " ở Đắk Lắk", " tại Huế", " ở Lào Cai"]
TITLE_BY_CATEGORY = {
    "fake_news": ["Tin giả về", "Tin giả về", "Tin giả về", "Thông tin sai sự thật về",
                  "Tin đồn thất thiệt về"],
    "negative_sentiment": ["Phản ứng tiêu cực về", "Bình luận tiêu cực về", "Dư luận bức xúc về"],
    "policy_misunderstanding": ["Hiểu sai chính sách", "Hiểu lầm quy định về",
                                "Tin giả về quy định"],
    "crisis": ["Khủng hoảng truyền thông về", "Sự cố nghiêm trọng liên quan đến"],
    "other": ["Thông tin cần theo dõi về", "Phản ánh của người dân về", "Tin giả về"],
}
DESCRIPTIONS = [
    "Bài đăng trên {p} về {s} được chia sẻ hàng nghìn lần trong vài giờ.",
    "Nhiều tài khoản trên {p} lan truyền nội dung sai lệch về {s}.",
    "Báo chí phản ánh thắc mắc của người dân về {s}; cần thông tin chính thức.",
    "Video trên {p} cắt ghép phát biểu của lãnh đạo về {s}.",
    "Dư luận trên {p} hiểu nhầm văn bản mới về {s}.",
    "",
]
PLATFORMS = ["Facebook", "TikTok", "YouTube", "Zalo", "báo điện tử", "X"]
CHANNELS = ["facebook", "tiktok", "youtube", "zalo", "press", "tv"]

# (value, weight): spread realistically, most incidents of a year already closed.
STATES = [("detected", 12), ("assessed", 18), ("task_force_proposed", 4),
          ("response_issued", 14), ("closed", 52)]
SEVERITIES = [("low", 30), ("medium", 40), ("high", 22), ("critical", 8)]
CATEGORIES = [("fake_news", 34), ("negative_sentiment", 24), ("policy_misunderstanding", 18),
              ("crisis", 6), ("other", 18)]
RESOLUTIONS = [("resolved", 70), ("dismissed", 22), ("duplicate", 8)]


class SeedError(Exception):
    pass


def _chooser(pairs: list[tuple[str, int]]) -> Callable[[random.Random], str]:
    values = [v for v, _ in pairs]
    cum = list(accumulate(w for _, w in pairs))
    total = cum[-1]
    return lambda rng: values[bisect(cum, rng.random() * total)]


_state, _severity, _category, _resolution = map(
    _chooser, (STATES, SEVERITIES, CATEGORIES, RESOLUTIONS))


def _search_text(cache: dict[str | None, str], title: str, description: str | None) -> str:
    """`search_text(title, description)` from cached folds of its two parts.

    Folding maps character by character and collapses spaces, and Unicode normalisation
    never reaches across a space, so fold(t + " " + d) == fold(t) + " " + fold(d) when both
    are non-empty; `_verify_search_text` checks this against the real function on a sample.
    """
    t = cache.get(title)
    if t is None:
        t = cache[title] = fold(title)
    d = cache.get(description) if description else ""
    if d is None:
        d = cache[description] = fold(description)
    return f"{t} {d}" if t and d else (t or d)


def _agency_codes() -> tuple[list[str], list[str]]:
    from app.agencies.service import seed_records

    codes = [r["code"] for r in seed_records()]
    ministries = [c for c in codes if not c.startswith("P-")]
    return codes, ministries


def _workflow() -> tuple[str, int]:
    from app.bootstrap import build_env
    from app.core.config import Settings

    wf = build_env(Settings(database_url="sqlite:///:memory:")).workflows.latest()
    return wf.name, wf.version


def _year_starts(tz: ZoneInfo, first: int, last: int) -> list[tuple[datetime, int]]:
    return [(datetime(y, 1, 1, tzinfo=tz).astimezone(UTC), y) for y in range(first, last + 2)]


# -- planning: creation times and reference numbers, split into chunks for worker processes ---

@dataclass
class Chunk:
    no: int
    seed: int
    now: datetime
    start: datetime
    offsets: list[float]  # seconds after `start`, ascending
    years: list[int]  # the calendar year (CRISISFLOW_TIMEZONE) of each offset
    first_seq: dict[int, int]  # year -> the last reference number before this chunk


def plan(count: int, *, seed: int = 1, now: datetime | None = None,
         zone: str = "Asia/Ho_Chi_Minh", chunk: int = CHUNK) -> tuple[list[Chunk], dict[int, int]]:
    """Chunks in creation order, and {year: last reference number} over all of them."""
    rng = random.Random(seed)
    now = now or datetime.now(UTC)
    tz = ZoneInfo(zone)
    span = 365 * 86400.0
    start = now - timedelta(seconds=span + 3600)
    offsets = sorted(rng.random() * span for _ in range(count))
    bounds = [((at - start).total_seconds(), y)
              for at, y in _year_starts(tz, start.astimezone(tz).year, now.astimezone(tz).year)]
    chunks: list[Chunk] = []
    counters: dict[int, int] = {}
    b = 0
    for no, lo in enumerate(range(0, count, chunk)):
        part = offsets[lo:lo + chunk]
        years = []
        first = dict(counters)
        for off in part:
            while b + 1 < len(bounds) and off >= bounds[b + 1][0]:
                b += 1
            year = bounds[b][1]
            years.append(year)
            counters[year] = counters.get(year, 0) + 1
        chunks.append(Chunk(no, seed * 7919 + no, now, start, part, years, first))
    return chunks, counters


# -- generation -----------------------------------------------------------------------------

@dataclass
class Context:
    wf_name: str
    wf_version: int
    all_codes: list[str]
    ministries: list[str]


def make_context() -> Context:
    all_codes, ministries = _agency_codes()
    return Context(*_workflow(), all_codes, ministries)


def generate(chunk: Chunk, ctx: Context) -> Iterator[tuple[dict[str, Any], list[str]]]:
    """(incident row, agency codes) for each creation time of the chunk, in order."""
    rng = random.Random(chunk.seed)
    r = rng.random
    now, start = chunk.now, chunk.start
    seqs = dict(chunk.first_seq)
    folded: dict[str | None, str] = {}
    previous_id: str | None = None
    n_subj, n_places, n_desc, n_plat, n_chan = (
        len(SUBJECTS), len(PLACES), len(DESCRIPTIONS), len(PLATFORMS), len(CHANNELS))
    all_codes, ministries = ctx.all_codes, ctx.ministries
    n_all, n_min = len(all_codes), len(ministries)
    deadline_hours = [2, 4, 8, 24, 72]
    head0 = "0" * 64
    for offset, year in zip(chunk.offsets, chunk.years, strict=True):
        created = start + timedelta(seconds=offset)
        seq = seqs[year] = seqs.get(year, 0) + 1
        category = _category(rng)
        severity = _severity(rng)
        state = _state(rng)
        subject = SUBJECTS[int(r() * n_subj)]
        prefixes = TITLE_BY_CATEGORY[category]
        title = f"{prefixes[int(r() * len(prefixes))]} {subject}{PLACES[int(r() * n_places)]}"
        description = DESCRIPTIONS[int(r() * n_desc)].format(
            p=PLATFORMS[int(r() * n_plat)], s=subject) or None
        st = _search_text(folded, title, description)

        from_alerts = r() < 0.6
        lead = None
        if r() < 0.85:
            lead = ministries[int(r() * n_min)] if r() < 0.7 else all_codes[int(r() * n_all)]
        affected: list[str] = []
        for _ in range(int(r() * 3)):
            code = all_codes[int(r() * n_all)]
            if code != lead and code not in affected:
                affected.append(code)
        t = created
        assessed_at = first_response_at = None
        assessment = closure = None
        version = 1
        escalation = 0
        closed_from_detected = state == "closed" and r() < 0.15
        if state != "detected" and not closed_from_detected:
            t = t + timedelta(seconds=300 + r() * 14100)
            assessed_at = t
            version += 1
            assessment = {"summary": f"Đánh giá: {subject}", "reach": int(100 + r() * 10**6),
                          "at": t.isoformat(), "by": "duty_officer:seed"}
            if severity == "critical" and r() < 0.7:
                escalation = 2
            elif (severity == "high" or severity == "critical") and r() < 0.6:
                escalation = 1
        if assessment is not None and (severity == "high" or severity == "critical") and \
                state in ("task_force_proposed", "response_issued", "closed"):
            t = t + timedelta(seconds=600 + r() * 35400)  # task force proposed (and approved)
            version += 1
        if assessment is not None and state in ("response_issued", "closed"):
            t = t + timedelta(seconds=600 + r() * 85800)
            first_response_at = t
            version += 1
        if state == "closed":
            t = t + timedelta(seconds=3600 + r() * 860400)
            resolution = "dismissed" if closed_from_detected else _resolution(rng)
            if first_response_at is None and resolution == "resolved":
                resolution = "dismissed"
            dup = previous_id if resolution == "duplicate" else None
            if resolution == "duplicate" and dup is None:
                resolution = "dismissed"
            version += 1
            closure = {"resolution": resolution, "summary": f"Đã xử lý: {subject}",
                       "lessons_learned": None, "duplicate_of": dup,
                       "closed_at": t.isoformat(), "closed_by": "duty_officer:seed"}
        if t > now:
            t = now
        deadline_at, overdue = None, False
        if state != "closed":
            deadline_at = t + timedelta(hours=deadline_hours[int(r() * 5)])
            overdue = deadline_at < now and r() < 0.5
        ident = str(uuid_utils.uuid7(nanoseconds=int(created.timestamp() * 1e9)))
        row = {
            "id": ident,
            "reference": f"INC-{year}-{seq:06d}",
            "workflow": ctx.wf_name,
            "workflow_version": ctx.wf_version,
            "title": title,
            "description": description,
            "state": state,
            "severity": severity,
            "category": category,
            "search_text": st,
            "lead_agency": lead,
            "affected_agencies": affected,
            "channels": [CHANNELS[int(r() * n_chan)]],
            "links": [f"https://{CHANNELS[int(r() * n_chan)]}.example.vn/p/{int(r() * 1e9)}"],
            "tags": [subject.split()[0]] if r() < 0.3 else [],
            "assessment": assessment,
            "closure": closure,
            "escalation_level": escalation,
            "overdue": overdue,
            "deadline_at": deadline_at,
            "version": version,
            "alert_count": int(1 + r() * 39) if from_alerts else 0,
            "first_alert_at": created if from_alerts else None,
            "last_alert_at": (created + (t - created) * r()) if from_alerts else None,
            "group_key": f"topic=t{int(r() * 5000):04d}" if from_alerts else None,
            "first_response_at": first_response_at,
            "assessed_at": assessed_at,
            "created_by": "monitor:bench-seed" if from_alerts else "duty_officer:seed",
            "created_at": created,
            "updated_at": t,
            "state_changed_at": t,
            "timeline_seq": 0,
            "timeline_head": head0,
        }
        previous_id = ident
        if seq % 997 == 1 and st != search_text(title, description):
            raise SeedError(f"search_text mismatch for {title!r} / {description!r}")
        yield row, ([lead, *affected] if lead else affected)


# -- encoders, run in worker processes --------------------------------------------------------

_WORKER: dict[str, Any] = {}


def _init_worker(dialect: str, columns: list[str]) -> None:
    _WORKER["ctx"] = make_context()
    _WORKER["columns"] = columns
    if dialect == "sqlite":
        from sqlalchemy.dialects import sqlite

        from app.core.db import JSON_CODEC
        from app.incidents.models import Incident

        table: sa.Table = Incident.__table__  # type: ignore[attr-defined]
        d = sqlite.dialect(json_serializer=JSON_CODEC["json_serializer"])
        # The same bind processors (and JSON text) the app's engines apply to these columns.
        _WORKER["procs"] = [table.c[c].type._cached_bind_processor(d) for c in columns]
    else:
        _WORKER["fmts"] = _copy_formatters(columns)


def _sqlite_chunk(chunk: Chunk) -> tuple[list[tuple[Any, ...]], list[tuple[str, str]]]:
    columns, procs = _WORKER["columns"], _WORKER["procs"]
    pairs = list(zip(columns, procs, strict=True))
    rows: list[tuple[Any, ...]] = []
    links: list[tuple[str, str]] = []
    for row, codes in generate(chunk, _WORKER["ctx"]):
        rows.append(tuple(p(row[c]) if p else row[c] for c, p in pairs))
        links.extend((row["id"], a) for a in codes)
    return rows, links


def _esc(text: str) -> str:
    if "\\" in text or "\t" in text or "\n" in text or "\r" in text:
        text = (text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")
                .replace("\r", "\\r"))
    return text


def _f_text(v: Any) -> str:
    return "\\N" if v is None else _esc(v)


def _f_json(v: Any) -> str:
    return "\\N" if v is None else _esc(orjson.dumps(v).decode())


def _f_time(v: Any) -> str:
    return "\\N" if v is None else v.isoformat()


def _f_bool(v: Any) -> str:
    return "\\N" if v is None else ("t" if v else "f")


def _f_int(v: Any) -> str:
    return "\\N" if v is None else str(v)


def _copy_formatters(columns: list[str]) -> list[Callable[[Any], str]]:
    """COPY text-format writers chosen by the column's SQLAlchemy type."""
    from app.core.types import UTCDateTime
    from app.incidents.models import Incident

    table: sa.Table = Incident.__table__  # type: ignore[attr-defined]
    out: list[Callable[[Any], str]] = []
    for name in columns:
        t = table.c[name].type
        if isinstance(t, UTCDateTime):
            out.append(_f_time)
        elif isinstance(t, sa.JSON) or isinstance(getattr(t, "impl", None), sa.JSON):
            out.append(_f_json)
        elif isinstance(t, sa.Boolean):
            out.append(_f_bool)
        elif isinstance(t, sa.Integer):
            out.append(_f_int)
        else:
            out.append(_f_text)
    return out


def _pg_chunk(chunk: Chunk) -> tuple[int, bytes, bytes]:
    pairs = list(zip(_WORKER["columns"], _WORKER["fmts"], strict=True))
    lines: list[str] = []
    links: list[str] = []
    for row, codes in generate(chunk, _WORKER["ctx"]):
        lines.append("\t".join([f(row[c]) for c, f in pairs]))
        links.extend(f"{row['id']}\t{a}" for a in codes)
    link_data = ("\n".join(links) + "\n").encode() if links else b""
    return len(lines), ("\n".join(lines) + "\n").encode(), link_data


def _sample_row() -> dict[str, Any]:
    chunks, _ = plan(1)
    return next(generate(chunks[0], make_context()))[0]


def _check_columns(engine: sa.Engine) -> list[str]:
    """The incident columns to fill; refuses a schema with a NOT NULL column we do not know."""
    sample = _sample_row()
    columns = sa.inspect(engine).get_columns("incident")
    missing = [c["name"] for c in columns if not c["nullable"] and c.get("default") is None
               and c["name"] not in sample]
    if missing:
        raise SeedError(f"incident has NOT NULL columns the seeder does not fill: {missing}")
    return [c["name"] for c in columns if c["name"] in sample]


def _pool(dialect: str, columns: list[str], processes: int) -> Any:
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    return ctx.Pool(processes, initializer=_init_worker, initargs=(dialect, columns))


def _bump_counters(conn: sa.Connection, counters: dict[int, int], dialect: str) -> None:
    from sqlalchemy.dialects.postgresql import insert as pg_insert
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    table = sa.table("reference_counter", sa.column("year"), sa.column("value"))
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    greatest = sa.func.max if dialect == "sqlite" else sa.func.greatest
    for year, value in counters.items():
        stmt = insert(table).values(year=year, value=value)
        stmt = stmt.on_conflict_do_update(
            index_elements=["year"], set_={"value": greatest(table.c.value, stmt.excluded.value)})
        conn.execute(stmt)


def seed_sqlite(url: str, count: int, *, seed: int = 1, processes: int = 2,
                progress: Callable[[str], None] = print) -> dict[str, Any]:
    """Insert through the app's own column encodings, in one transaction. The FTS insert
    trigger is set aside for the load and put back from its own stored SQL, and the index is
    filled in one pass with FTS5's 'rebuild' (same content as the trigger would write, about
    five times faster); `seed()` then checks the FTS index against a LIKE scan."""
    from app.core.db import make_sync_engine
    from app.incidents.models import IncidentAgency

    engine = make_sync_engine(url)
    started = time.monotonic()
    try:
        columns = _check_columns(engine)
        chunks, counters = plan(count, seed=seed)
        sql = (f"INSERT INTO incident ({', '.join(columns)}) "
               f"VALUES ({', '.join('?' * len(columns))})")
        ia = IncidentAgency.__table__  # type: ignore[attr-defined]
        link_sql = f"INSERT INTO {ia.name} (incident_id, agency) VALUES (?, ?)"
        raw = engine.raw_connection()
        try:
            cur = raw.cursor()
            # This connection only: a large page cache keeps the index pages of a 200k-row
            # transaction in memory instead of spilling them to the WAL and reading them back.
            cur.execute("PRAGMA cache_size = -524288")
            cur.execute("BEGIN IMMEDIATE")
            try:
                trigger = cur.execute(
                    "SELECT sql FROM sqlite_master WHERE type = 'trigger' "
                    "AND name = 'incident_fts_ai'").fetchone()
                if trigger:
                    cur.execute("DROP TRIGGER incident_fts_ai")
                done = 0
                with _pool("sqlite", columns, processes) as pool:
                    for rows, links in pool.imap(_sqlite_chunk, chunks):
                        cur.executemany(sql, rows)
                        cur.executemany(link_sql, links)
                        done += len(rows)
                        if done % 100_000 < CHUNK:
                            progress(f"inserted {done}/{count} incidents "
                                     f"({time.monotonic() - started:.0f}s)")
                if trigger:
                    cur.execute(trigger[0])
                    cur.execute("INSERT INTO incident_fts(incident_fts) VALUES ('rebuild')")
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise
        finally:
            raw.close()
        progress(f"inserted {count} incidents, FTS rebuilt ({time.monotonic() - started:.0f}s)")
        with engine.begin() as conn:
            _bump_counters(conn, counters, "sqlite")
        with engine.connect() as conn:
            conn.exec_driver_sql("ANALYZE")
            conn.commit()
            stats = _stats(conn, "sqlite")
    finally:
        engine.dispose()
    stats["seconds"] = round(time.monotonic() - started, 1)
    return stats


def seed_postgresql(url: str, count: int, *, seed: int = 1, processes: int = 2,
                    progress: Callable[[str], None] = print) -> dict[str, Any]:
    """COPY in text format; the secondary indexes of incident and incident_agency are dropped
    for the load and recreated from their own definitions (all in one transaction)."""
    import tempfile

    import psycopg

    from app.core.db import make_sync_engine

    plain = url.replace("postgresql+psycopg://", "postgresql://", 1)
    engine = make_sync_engine(url)
    started = time.monotonic()
    try:
        columns = _check_columns(engine)
        chunks, counters = plan(count, seed=seed)
        with psycopg.connect(plain, autocommit=False) as conn, \
                tempfile.TemporaryFile() as link_file:
            conn.execute("SET maintenance_work_mem = '256MB'")
            conn.execute("SET synchronous_commit = off")
            indexes = conn.execute(
                "SELECT i.indexname, i.indexdef FROM pg_indexes i "
                "WHERE i.schemaname = current_schema() "
                "AND i.tablename IN ('incident', 'incident_agency') "
                "AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conname = i.indexname)"
            ).fetchall()
            for name, _ in indexes:
                conn.execute(f'DROP INDEX "{name}"')
            col_list = ", ".join(f'"{c}"' for c in columns)
            done = 0
            with conn.cursor() as cur:
                with cur.copy(f"COPY incident ({col_list}) FROM STDIN") as copy, \
                        _pool("postgresql", columns, processes) as pool:
                    for n, data, links in pool.imap(_pg_chunk, chunks):
                        copy.write(data)
                        link_file.write(links)
                        done += n
                        if done % 200_000 < CHUNK:
                            progress(f"copied {done}/{count} incidents "
                                     f"({time.monotonic() - started:.0f}s)")
                link_file.seek(0)
                with cur.copy("COPY incident_agency (incident_id, agency) FROM STDIN") as copy:
                    while block := link_file.read(1 << 20):
                        copy.write(block)
            progress(f"copied {count} incidents and their agencies "
                     f"({time.monotonic() - started:.0f}s); recreating {len(indexes)} indexes")
            for _, definition in indexes:
                conn.execute(definition)
            conn.commit()
        with engine.begin() as sconn:
            _bump_counters(sconn, counters, "postgresql")
        with psycopg.connect(plain, autocommit=True) as conn:
            conn.execute("ANALYZE incident")
            conn.execute("ANALYZE incident_agency")
        with engine.connect() as sconn:
            stats = _stats(sconn, "postgresql")
    finally:
        engine.dispose()
    stats["seconds"] = round(time.monotonic() - started, 1)
    return stats


def _stats(conn: sa.Connection, dialect: str) -> dict[str, Any]:
    def one(sql: str) -> Any:
        return conn.execute(sa.text(sql)).scalar_one()

    stats = {
        "incidents": one("SELECT count(*) FROM incident"),
        "agency_links": one("SELECT count(*) FROM incident_agency"),
        "assessed_high": one("SELECT count(*) FROM incident "
                             "WHERE state = 'assessed' AND severity = 'high'"),
        "tin_gia": one("SELECT count(*) FROM incident WHERE search_text LIKE '%tin gia%'"),
    }
    if dialect == "sqlite":
        stats["fts_tin_gia"] = one(
            "SELECT count(*) FROM incident_fts WHERE incident_fts MATCH '\"tin gia\"'")
    return stats


def seed(url: str, count: int, *, seed: int = 1, processes: int = 2,
         progress: Callable[[str], None] = print) -> dict[str, Any]:
    if url.startswith("sqlite"):
        stats = seed_sqlite(url, count, seed=seed, processes=processes, progress=progress)
        if stats["fts_tin_gia"] != stats["tin_gia"]:
            raise SeedError(f"incident_fts is not populated: FTS finds {stats['fts_tin_gia']} "
                            f"'tin gia' rows, LIKE finds {stats['tin_gia']}")
        return stats
    return seed_postgresql(url, count, seed=seed, processes=processes, progress=progress)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--url", required=True, help="a migrated database (SQLAlchemy URL)")
    parser.add_argument("--count", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args()
    print(json.dumps(seed(args.url, args.count, seed=args.seed, processes=args.processes)))


if __name__ == "__main__":
    main()
