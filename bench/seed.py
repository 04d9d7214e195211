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

SQLite: executemany through the sync SQLAlchemy engine with the app's own table objects (so
values are stored exactly as the app stores them); the FTS5 insert trigger fills
`incident_fts`. PostgreSQL: COPY via psycopg, with the secondary indexes of the two tables
dropped for the load and recreated from their own definitions afterwards. Both: ANALYZE.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from bisect import bisect
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from itertools import accumulate
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa
import uuid_utils

from app.incidents.search import search_text

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


def generate(count: int, counters: dict[int, int], *, seed: int = 1,
             now: datetime | None = None, zone: str = "Asia/Ho_Chi_Minh",
             ) -> Iterator[tuple[dict[str, Any], list[str]]]:
    """(incident row, agency codes) in creation order; `counters` ends as {year: last number}."""
    rng = random.Random(seed)
    now = now or datetime.now(UTC)
    tz = ZoneInfo(zone)
    wf_name, wf_version = _workflow()
    all_codes, ministries = _agency_codes()
    span = 365 * 86400.0
    offsets = sorted(rng.random() * span for _ in range(count))
    start = now - timedelta(seconds=span + 3600)
    folded: dict[tuple[str, str | None], str] = {}
    previous_id: str | None = None
    for offset in offsets:
        created = start + timedelta(seconds=offset)
        year = created.astimezone(tz).year
        counters[year] = counters.get(year, 0) + 1
        category = _category(rng)
        severity = _severity(rng)
        state = _state(rng)
        subject = rng.choice(SUBJECTS)
        title = f"{rng.choice(TITLE_BY_CATEGORY[category])} {subject}{rng.choice(PLACES)}"
        desc_tpl = rng.choice(DESCRIPTIONS)
        description = desc_tpl.format(p=rng.choice(PLATFORMS), s=subject) or None
        st = folded.get((title, description))
        if st is None:
            st = folded[(title, description)] = search_text(title, description)

        from_alerts = rng.random() < 0.6
        lead = None
        if rng.random() < 0.85:
            lead = rng.choice(ministries) if rng.random() < 0.7 else rng.choice(all_codes)
        affected = [c for c in {rng.choice(all_codes) for _ in range(rng.randrange(0, 3))}
                    if c != lead]
        t = created
        assessed_at = first_response_at = None
        assessment = closure = None
        version = 1
        escalation = 0
        closed_from_detected = state == "closed" and rng.random() < 0.15
        if state != "detected" and not closed_from_detected:
            t = t + timedelta(minutes=rng.uniform(5, 240))
            assessed_at = t
            version += 1
            assessment = {"summary": f"Đánh giá: {subject}", "reach": rng.randrange(100, 10**6),
                          "at": t.isoformat(), "by": "duty_officer:seed"}
            if severity == "critical" and rng.random() < 0.7:
                escalation = 2
            elif severity in ("high", "critical") and rng.random() < 0.6:
                escalation = 1
        if state in ("task_force_proposed", "response_issued", "closed") and \
                severity in ("high", "critical") and assessment is not None:
            t = t + timedelta(minutes=rng.uniform(10, 600))
            version += 1
        if state in ("response_issued", "closed") and assessment is not None:
            t = t + timedelta(minutes=rng.uniform(10, 1440))
            first_response_at = t
            version += 1
        if state == "closed":
            t = t + timedelta(hours=rng.uniform(1, 240))
            resolution = "dismissed" if closed_from_detected else _resolution(rng)
            if first_response_at is None and resolution == "resolved":
                resolution = "dismissed"
            dup = previous_id if resolution == "duplicate" and previous_id else None
            if resolution == "duplicate" and dup is None:
                resolution = "dismissed"
            version += 1
            closure = {"resolution": resolution, "summary": f"Đã xử lý: {subject}",
                       "lessons_learned": None, "duplicate_of": dup,
                       "closed_at": t.isoformat(), "closed_by": "duty_officer:seed"}
        t = min(t, now)
        alert_count = rng.randrange(1, 40) if from_alerts else 0
        first_alert = created if from_alerts else None
        last_alert = (created + (t - created) * rng.random()) if from_alerts else None
        deadline_at, overdue = None, False
        if state != "closed":
            deadline_at = t + timedelta(hours=rng.choice([2, 4, 8, 24, 72]))
            overdue = deadline_at < now and rng.random() < 0.5
        ident = str(uuid_utils.uuid7(nanoseconds=int(created.timestamp() * 1e9)))
        row = {
            "id": ident,
            "reference": f"INC-{year}-{counters[year]:06d}",
            "workflow": wf_name,
            "workflow_version": wf_version,
            "title": title,
            "description": description,
            "state": state,
            "severity": severity,
            "category": category,
            "search_text": st,
            "lead_agency": lead,
            "affected_agencies": affected,
            "channels": [rng.choice(CHANNELS)],
            "links": [f"https://{rng.choice(CHANNELS)}.example.vn/p/{rng.randrange(10**9)}"],
            "tags": [subject.split()[0]] if rng.random() < 0.3 else [],
            "assessment": assessment,
            "closure": closure,
            "escalation_level": escalation,
            "overdue": overdue,
            "deadline_at": deadline_at,
            "version": version,
            "alert_count": alert_count,
            "first_alert_at": first_alert,
            "last_alert_at": last_alert,
            "group_key": f"topic=t{rng.randrange(5000):04d}" if from_alerts else None,
            "first_response_at": first_response_at,
            "assessed_at": assessed_at,
            "created_by": "monitor:bench-seed" if from_alerts else "duty_officer:seed",
            "created_at": created,
            "updated_at": t,
            "state_changed_at": t,
            "timeline_seq": 0,
            "timeline_head": "0" * 64,
        }
        previous_id = ident
        yield row, sorted({c for c in [lead, *affected] if c})


def _check_columns(engine: sa.Engine, sample: dict[str, Any]) -> list[str]:
    """The incident columns to fill; refuses a schema with a NOT NULL column we do not know."""
    columns = sa.inspect(engine).get_columns("incident")
    names = [c["name"] for c in columns]
    missing = [c["name"] for c in columns if not c["nullable"] and c.get("default") is None
               and c["name"] not in sample]
    if missing:
        raise SeedError(f"incident has NOT NULL columns the seeder does not fill: {missing}")
    return [n for n in names if n in sample]


def _chunks(it: Iterator[Any], size: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for item in it:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _bump_counters(conn: sa.Connection, counters: dict[int, int], dialect: str) -> None:
    from sqlalchemy.dialects.postgresql import insert as pg_insert
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    table = sa.table("reference_counter", sa.column("year"), sa.column("value"))
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    for year, value in counters.items():
        stmt = insert(table).values(year=year, value=value)
        stmt = stmt.on_conflict_do_update(
            index_elements=["year"],
            set_={"value": sa.func.max(table.c.value, stmt.excluded.value)
                  if dialect == "sqlite" else sa.func.greatest(table.c.value,
                                                               stmt.excluded.value)})
        conn.execute(stmt)


def seed_sqlite(url: str, count: int, *, seed: int = 1,
                progress: Callable[[str], None] = print) -> dict[str, Any]:
    from app.core.db import make_sync_engine
    from app.incidents.models import Incident, IncidentAgency

    engine = make_sync_engine(url)
    inc_table: sa.Table = Incident.__table__  # type: ignore[attr-defined]
    ia_table: sa.Table = IncidentAgency.__table__  # type: ignore[attr-defined]
    counters: dict[int, int] = {}
    gen = generate(count, counters, seed=seed)
    started = time.monotonic()
    done = 0
    columns: list[str] | None = None
    try:
        for chunk in _chunks(gen, CHUNK):
            if columns is None:
                columns = _check_columns(engine, chunk[0][0])
            rows = [{c: r[c] for c in columns} for r, _ in chunk]
            links = [{"incident_id": r["id"], "agency": a} for r, codes in chunk for a in codes]
            with engine.begin() as conn:
                conn.execute(inc_table.insert(), rows)
                if links:
                    conn.execute(ia_table.insert(), links)
            done += len(chunk)
            if done % 100_000 < CHUNK:
                progress(f"seeded {done}/{count} incidents ({time.monotonic() - started:.0f}s)")
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


def _copy_value(value: Any) -> Any:
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False)
    return value


def seed_postgresql(url: str, count: int, *, seed: int = 1,
                    progress: Callable[[str], None] = print) -> dict[str, Any]:
    import psycopg

    from app.core.db import make_sync_engine

    plain = url.replace("postgresql+psycopg://", "postgresql://", 1)
    engine = make_sync_engine(url)
    counters: dict[int, int] = {}
    gen = generate(count, counters, seed=seed)
    started = time.monotonic()
    try:
        first = next(gen)
        columns = _check_columns(engine, first[0])

        def all_rows() -> Iterator[tuple[dict[str, Any], list[str]]]:
            yield first
            yield from gen

        with psycopg.connect(plain, autocommit=False) as conn:
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
            links: list[tuple[str, str]] = []
            with conn.cursor() as cur:
                with cur.copy(f"COPY incident ({col_list}) FROM STDIN") as copy:
                    for row, codes in all_rows():
                        copy.write_row([_copy_value(row[c]) for c in columns])
                        links.extend((row["id"], a) for a in codes)
                        done += 1
                        if done % 200_000 == 0:
                            progress(f"copied {done}/{count} incidents "
                                     f"({time.monotonic() - started:.0f}s)")
                with cur.copy("COPY incident_agency (incident_id, agency) FROM STDIN") as copy:
                    for link in links:
                        copy.write_row(link)
            progress(f"copied {done} incidents, {len(links)} agency links "
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
    one = lambda sql: conn.exec_driver_sql(sql).scalar_one()  # noqa: E731
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


def seed(url: str, count: int, *, seed: int = 1,
         progress: Callable[[str], None] = print) -> dict[str, Any]:
    if url.startswith("sqlite"):
        stats = seed_sqlite(url, count, seed=seed, progress=progress)
        if stats["fts_tin_gia"] != stats["tin_gia"]:
            raise SeedError(f"incident_fts is not populated: FTS finds {stats['fts_tin_gia']} "
                            f"'tin gia' rows, LIKE finds {stats['tin_gia']}")
        return stats
    return seed_postgresql(url, count, seed=seed, progress=progress)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="a migrated database (SQLAlchemy URL)")
    parser.add_argument("--count", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    print(json.dumps(seed(args.url, args.count, seed=args.seed)))


if __name__ == "__main__":
    main()
