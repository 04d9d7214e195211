"""The storm's fast paths store and show exactly what the ordinary paths do: rows inserted
through the driver, the folded search text, the event snapshot of an incident and the
datetimes of listed rows."""

from __future__ import annotations

import random
import re
import unicodedata
from datetime import UTC, datetime, timedelta, timezone
from types import SimpleNamespace
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from sqlalchemy.dialects import sqlite
from sqlmodel import SQLModel, col

from app.alerts.models import Alert
from app.core.bulk import insert_rows
from app.core.db import make_sync_engine
from app.core.jsonutil import dumps, dumps_utc
from app.core.rawrows import postgresql_time_sql, sqlite_time_sql
from app.core.types import UTCDateTime, row_of, table_of, unvalidated
from app.incidents.models import Category, Incident, IncidentPublic, Severity, State
from app.incidents.search import fold
from app.incidents.service import snapshot
from tests.factories import portal

ICT = timezone(timedelta(hours=7))
NOW = datetime(2026, 11, 26, 15, 4, 5, 60, tzinfo=ICT)


def _incident(id_: str) -> dict[str, Any]:
    return {"id": id_, "reference": f"INC-2026-{id_}", "workflow": "communication-incident",
            "workflow_version": 1, "state": State.detected, "severity": Severity.high,
            "category": Category.fake_news, "title": "Tin giả về học phí",
            "description": None, "lead_agency": "MOET", "affected_agencies": ["MOF", "MOH"],
            "links": ["https://baomoi.example.vn/a"], "assessment": None,
            "created_by": "giám sát", "created_at": NOW, "updated_at": NOW.astimezone(UTC),
            "state_changed_at": NOW, "first_alert_at": NOW, "last_alert_at": None,
            "deadline_at": datetime(2027, 1, 1, tzinfo=UTC), "overdue": True, "alert_count": 3,
            "search_text": "tin gia ve hoc phi"}


def _alert(id_: str, incident_id: str) -> dict[str, Any]:
    return {"id": id_, "incident_id": incident_id, "format": "generic", "source": "nguồn",
            "fingerprint": "fp-1", "group_key": None, "status": "firing", "deduplicated": True,
            "severity": "high", "category": "fake_news", "title": "Tin giả",
            "labels": {"topic": "học phí", "k": "v"}, "raw": '{"a": 1}', "observed_at": None,
            "received_at": NOW, "resolved_at": datetime(2026, 1, 1, tzinfo=UTC),
            "received_by": None}


def _stored(conn: Any, table: str, id_: str) -> dict[str, Any]:
    """The row as the database holds it, without SQLAlchemy's result processing."""
    result = conn.exec_driver_sql(f"SELECT * FROM {table} WHERE id = '{id_}'")
    return dict(result.mappings().one())


def test_driver_inserts_store_what_the_orm_stores(client: TestClient, backend: str,
                                                  admin: dict[str, str]) -> None:
    db = client.app.state.db  # type: ignore[attr-defined]

    async def write() -> None:
        async with db.transaction() as session:
            orm: list[SQLModel] = [Incident.model_validate(_incident("orm"))]
            session.add_all(orm)
            await session.flush()
            session.add(Alert.model_validate(_alert("orm-a", "orm")))
            await session.flush()
            await insert_rows(session, table_of(Incident),
                              [row_of(unvalidated(Incident, _incident("bulk")))])
            await insert_rows(session, table_of(Alert), [_alert("bulk-a", "bulk")])

    async def read() -> list[tuple[dict[str, Any], dict[str, Any]]]:
        async with db.transaction() as session:
            conn = await session.connection()
            return [await conn.run_sync(lambda c, t=t, a=a, b=b: (_stored(c, t, a),
                                                                  _stored(c, t, b)))
                    for t, a, b in [("incident", "orm", "bulk"), ("alert", "orm-a", "bulk-a")]]

    portal(client).call(write)
    rows = portal(client).call(read)
    if backend == "sqlite":  # the text format SQLAlchemy's SQLite dialect stores and compares
        assert rows[0][1]["created_at"] == "2026-11-26 08:04:05.000060"
    for orm_row, bulk_row in rows:
        differing = {k for k in orm_row if orm_row[k] != bulk_row[k]}
        assert differing <= {"id", "reference", "incident_id"}, \
            {k: (orm_row[k], bulk_row[k]) for k in differing}
    # And the API reads a driver-inserted incident back with its zone-aware times.
    got = client.get("/api/v1/incidents/bulk", headers=admin).json()
    assert datetime.fromisoformat(got["created_at"]) == NOW
    assert got["affected_agencies"] == ["MOF", "MOH"] and got["assessment"] is None


# Text that COPY's text format must escape, and JSON with it inside.
AWKWARD = "tab\there\nnew line\r\\N back\\slash \\. \"quoted\" ✓ Tiếng Việt"


def test_many_rows_store_what_the_orm_stores_and_fail_as_one(
        client: TestClient, backend: str, admin: dict[str, str]) -> None:
    """From COPY_MIN_ROWS rows on, PostgreSQL takes rows by COPY (SQLite by executemany):
    awkward text, JSON, NULLs and zone-aware times are stored exactly as the ORM stores them,
    rows held in `pipelined` land in order around the COPY, and a COPY that fails (a
    foreign key) is SQLAlchemy's IntegrityError where the block ends, storing nothing of it."""
    from app.core.bulk import COPY_MIN_ROWS, pipelined
    from app.incidents.models import ReferenceCounter

    db = client.app.state.db  # type: ignore[attr-defined]
    counters = table_of(ReferenceCounter)

    def alert(id_: str) -> dict[str, Any]:
        return {**_alert(id_, "copy"), "title": AWKWARD, "source": AWKWARD[::-1],
                "group_key": None if id_.endswith("0") else AWKWARD,
                "labels": {AWKWARD: AWKWARD, "k": "v"}, "raw": AWKWARD,
                "observed_at": NOW, "resolved_at": None}

    many = [alert(f"copy-{i:04d}") for i in range(COPY_MIN_ROWS + 1)]

    async def write() -> None:
        async with db.transaction() as session:
            session.add(Incident.model_validate(_incident("copy")))
            await session.flush()
            session.add(Alert.model_validate(alert("orm-0")))
            session.add(Alert.model_validate(alert("orm-1")))
            await session.flush()
            async with pipelined(session):
                await insert_rows(session, counters, [{"year": 1, "value": 1}])
                await insert_rows(session, table_of(Alert), many)
                await insert_rows(session, counters, [{"year": 2, "value": 2}])
            with pytest.raises(sa.exc.IntegrityError):
                async with session.begin_nested(), pipelined(session):
                    await insert_rows(session, counters, [{"year": 3, "value": 3}])
                    await insert_rows(session, table_of(Alert), [
                        {**alert(f"orphan-{i:04d}"), "incident_id": "no-such-incident"}
                        for i in range(COPY_MIN_ROWS)])

    async def read() -> tuple[list[dict[str, Any]], list[Any], int]:
        async with db.transaction() as session:
            conn = await session.connection()
            stored = await conn.run_sync(lambda c: [
                _stored(c, "alert", id_) for id_ in ("orm-0", "copy-0000", "orm-1", "copy-0001")])
            years = (await session.execute(sa.select(counters.c.year))).scalars().all()
            orphans = (await session.execute(sa.select(sa.func.count()).select_from(
                table_of(Alert)).where(table_of(Alert).c.id.like("orphan-%")))).scalar_one()
            return stored, sorted(years), orphans

    portal(client).call(write)
    stored, years, orphans = portal(client).call(read)
    for orm_row, bulk_row in (stored[:2], stored[2:]):
        differing = {k for k in orm_row if orm_row[k] != bulk_row[k]}
        assert differing == {"id"}, {k: (orm_row[k], bulk_row[k]) for k in differing}
    assert years == [1, 2] and orphans == 0
    got = client.get("/api/v1/incidents/copy/alerts?limit=200",
                     headers=admin).json()["items"]
    assert len(got) == 200 and got[0]["title"] == AWKWARD
    assert got[0]["labels"] == {AWKWARD: AWKWARD, "k": "v"}


def test_many_incidents_store_what_the_orm_stores(client: TestClient, backend: str,
                                                 admin: dict[str, str]) -> None:
    """Incidents by COPY (a storm of new topics opens hundreds at once): enums, counters,
    flags, JSON lists, NULLs and zone-aware times are stored as the ORM stores them, and
    read back through the API."""
    from app.core.bulk import COPY_MIN_ROWS

    db = client.app.state.db  # type: ignore[attr-defined]

    def incident(id_: str, n: int) -> dict[str, Any]:
        return {**_incident(id_), "reference": f"INC-2026-{id_}", "title": AWKWARD,
                "description": None if n % 2 else AWKWARD, "overdue": bool(n % 2),
                "alert_count": n, "links": [AWKWARD, "https://baomoi.example.vn/a"],
                "affected_agencies": [] if n % 3 else ["MOF", "MOH"]}

    async def write() -> None:
        async with db.transaction() as session:
            session.add(Incident.model_validate(incident("orm-0", 0)))
            session.add(Incident.model_validate(incident("orm-1", 1)))
            await session.flush()
            await insert_rows(session, table_of(Incident), [
                row_of(unvalidated(Incident, incident(f"many-{n:04d}", n)))
                for n in range(COPY_MIN_ROWS)])

    async def read() -> list[dict[str, Any]]:
        async with db.transaction() as session:
            conn = await session.connection()
            ids = ("orm-0", "many-0000", "orm-1", "many-0001")
            rows: list[dict[str, Any]] = await conn.run_sync(
                lambda c: [_stored(c, "incident", id_) for id_ in ids])
            return rows

    portal(client).call(write)
    stored = portal(client).call(read)
    for orm_row, bulk_row in (stored[:2], stored[2:]):
        differing = {k for k in orm_row if orm_row[k] != bulk_row[k]}
        assert differing == {"id", "reference"}, \
            {k: (orm_row[k], bulk_row[k]) for k in differing}
    got = client.get("/api/v1/incidents/many-0003", headers=admin).json()
    assert got["title"] == AWKWARD and got["links"][0] == AWKWARD
    assert got["affected_agencies"] == ["MOF", "MOH"] and got["alert_count"] == 3
    assert datetime.fromisoformat(got["created_at"]) == NOW


def test_events_are_numbered_in_list_order_and_conflicts_raise_as_usual(
        client: TestClient, backend: str) -> None:
    """Events go in with INSERT ... RETURNING (multi-row VALUES, several statements for a
    long list, on SQLite; one JSON document on PostgreSQL): their sequence numbers still
    follow the list, they read back as the ORM wrote them, and a
    duplicate dedup key is SQLAlchemy's IntegrityError on both databases (rolled back whole)."""
    from app.core.bulk import RETURNING_CHUNK
    from app.notifications.models import Event
    from app.notifications.outbox import emit_rows, event_row

    db = client.app.state.db  # type: ignore[attr-defined]
    incident = {"id": "i-1", "severity": "high", "lead_agency": "MOH",
                "affected_agencies": ["MOF", "MOH"], "title": "Tin giả ✓ \"x\""}
    rows = [event_row(type="incident.detected", at=NOW, incident=incident,
                      extra={"n": i, "ratio": 0.5, "none": None}, dedup_key=f"k{i}")
            for i in range(2 * RETURNING_CHUNK + 7)]

    async def write() -> None:
        async with db.transaction() as session:
            await emit_rows(session, rows)
            session.add(Event.model_validate(event_row(type="incident.detected", at=NOW,
                                                       incident=incident, extra={"n": -1})))

    async def read() -> list[Any]:
        async with db.read() as session:
            result = await session.execute(sa.select(Event).order_by(col(Event.seq)))
            # As plain values: the read session's rollback expires the objects.
            return [SimpleNamespace(**e.model_dump()) for e in result.scalars().all()]

    async def duplicate() -> None:
        async with db.transaction() as session:
            await emit_rows(session, [event_row(type="x", at=NOW, incident=None,
                                                dedup_key="fresh")])
            await emit_rows(session, [event_row(type="x", at=NOW, incident=None,
                                                dedup_key="k3")])

    portal(client).call(write)
    stored = portal(client).call(read)
    assert [e.id for e in stored] == [r["id"] for r in rows] + [stored[-1].id]
    assert [e.data["n"] for e in stored] == [*range(len(rows)), -1]
    orm, bulk = stored[-1], stored[0]
    assert bulk.at == orm.at == NOW and bulk.agencies == orm.agencies == ["MOF", "MOH"]
    assert bulk.data["incident"] == orm.data["incident"] and bulk.severity == "high"
    assert bulk.data["none"] is None and bulk.data["ratio"] == 0.5
    with pytest.raises(sa.exc.IntegrityError):
        portal(client).call(duplicate)
    assert len(portal(client).call(read)) == len(rows) + 1  # "fresh" went with it


def _fold_reference(text: str) -> str:
    """The definition: NFD, combining marks dropped, đ → d, spaces collapsed, lower case."""
    decomposed = unicodedata.normalize("NFD", text.replace("đ", "d").replace("Đ", "d"))
    stripped = "".join(c for c in decomposed if not unicodedata.combining(c))
    return re.sub(r"\s+", " ", stripped).strip().lower()


def test_folding_matches_its_definition() -> None:
    rng = random.Random(7)
    ranges = [(32, 0x250), (0x300, 0x370), (0x1E00, 0x1F00), (0xAC00, 0xAC40),
              (0x3040, 0x30A0), (0x10000, 0x10100), (0x2000, 0x2010)]
    samples = ["Tin giả về HỌC PHÍ Đại học", "e\u0301\u0323 ǅ ﬁ Å", "  a\t\n b  ", ""]
    for _ in range(2000):
        samples.append("".join(chr(rng.randrange(*rng.choice(ranges)))
                               for _ in range(rng.randrange(0, 40))))
    for text in samples:
        assert fold(text) == _fold_reference(text), text


def test_event_snapshot_is_the_public_representation() -> None:
    inc = unvalidated(Incident, _incident("snap"))
    expected = IncidentPublic.model_validate(inc).model_dump(mode="json",
                                                             exclude={"allowed_triggers"})
    assert snapshot(inc) == expected
    assert datetime.fromisoformat(snapshot(inc)["created_at"]) == NOW


def test_listed_times_read_as_the_serialised_datetimes(db_url: str, backend: str) -> None:
    """The list has the database write each row as JSON, datetimes included: they must read
    exactly as pydantic (`dumps_utc`) writes the datetime the ORM reads back."""
    rng = random.Random(7)
    start = datetime(1999, 12, 31, 23, 59, 59, tzinfo=UTC)
    samples = [start, start.replace(microsecond=1), start.replace(microsecond=999999),
               datetime(2026, 1, 1, tzinfo=ICT)]
    samples += [start + timedelta(seconds=rng.randrange(10**9),
                                  microseconds=rng.choice([0, rng.randrange(10**6)]))
                for _ in range(3000)]
    expected: list[str | None] = [dumps_utc(at.astimezone(UTC)).decode()[1:-1] for at in samples]
    engine = make_sync_engine(db_url)
    try:
        with engine.connect() as conn:
            if backend == "sqlite":
                processor = UTCDateTime().bind_processor(sqlite.dialect())
                stored = [processor(at) for at in samples]
                # What another tool may have written: no fraction, a "T", an offset.
                stored += ["2026-11-26 15:04:05", "2026-11-26T15:04:05.250",
                           "2026-11-26T22:04:05+07:00", None]
                expected += ["2026-11-26T15:04:05Z", "2026-11-26T15:04:05.250Z",
                             "2026-11-26T15:04:05.000Z", None]
                sql = (f"SELECT {sqlite_time_sql('value')} FROM json_each(?) ORDER BY key")
                params: Any = (dumps(stored).decode(),)
            else:
                samples.append(None)  # type: ignore[arg-type]
                expected.append(None)
                sql = (f"SELECT {postgresql_time_sql('x')} FROM unnest(%s::timestamptz[]) "
                       "WITH ORDINALITY AS v(x, i) ORDER BY i")
                params = ([at.astimezone(ICT) if at else None for at in samples],)
            got = [row[0] for row in conn.exec_driver_sql(sql, params)]
    finally:
        engine.dispose()
    assert got == expected


def test_held_statements_land_in_order_or_fail_as_one(client: TestClient, backend: str) -> None:
    """Inside `pipelined`, the driver's inserts may be sent together at the end (PostgreSQL):
    they land in order, a conflict among them is SQLAlchemy's IntegrityError where the block
    ends (inside the caller's savepoint, so the rest of the transaction goes on), and a block
    that fails stores nothing."""
    from app.core.bulk import pipelined
    from app.incidents.models import ReferenceCounter

    db = client.app.state.db  # type: ignore[attr-defined]
    table = table_of(ReferenceCounter)

    async def scenario() -> list[Any]:
        async with db.transaction() as session:
            async with pipelined(session):
                await insert_rows(session, table, [{"year": 1, "value": 1},
                                                   {"year": 2, "value": 2}])
                await insert_rows(session, table, [{"year": 3, "value": 3}])
            with pytest.raises(sa.exc.IntegrityError):
                async with session.begin_nested(), pipelined(session):
                    await insert_rows(session, table, [{"year": 4, "value": 4}])
                    await insert_rows(session, table, [{"year": 2, "value": 9}])  # taken
            with pytest.raises(RuntimeError):
                async with session.begin_nested(), pipelined(session):
                    await insert_rows(session, table, [{"year": 5, "value": 5}])
                    raise RuntimeError("the block fails")
            async with pipelined(session):
                await insert_rows(session, table, [{"year": 6, "value": 6}])
        async with db.read() as session:
            return list((await session.execute(sa.select(table.c.year, table.c.value)
                                               .order_by(table.c.year))).all())

    assert [tuple(r) for r in portal(client).call(scenario)] == [(1, 1), (2, 2), (3, 3), (6, 6)]


async def _years(db: Any) -> list[tuple[int, int]]:
    from app.core.bulk import driver

    async with db.transaction() as session:
        rows = await (await driver(session)).execute(
            "SELECT year, value FROM reference_counter ORDER BY year", ())
        return [tuple(r) for r in rows]


def test_driver_statements_return_their_rows_in_order_and_fail_by_name(
        db_url: str, backend: str) -> None:
    """Several statements in one go (one pipeline on PostgreSQL): each gives back its own
    rows, typed as the database returns them; a list of parameter tuples runs once per
    tuple; the first failing statement is the error raised (SQLAlchemy's class, naming that
    statement) and nothing of the transaction stays."""
    import asyncio

    from app.core.bulk import driver
    from app.core.db import Database

    db = Database(db_url, pool_size=1)
    insert = "INSERT INTO reference_counter (year, value) VALUES (?, ?)"

    async def scenario() -> tuple[list[list[Any]], list[Any]]:
        async with db.transaction() as session:
            d = await driver(session)
            rows = await d.execute_all([
                (insert, [(2001, 1), (2002, 2), (2003, 3)]),
                ("SELECT year, value FROM reference_counter WHERE year > ? ORDER BY year",
                 (2001,)),
                ("SELECT count(*) FROM reference_counter", ()),
            ])
        with pytest.raises(sa.exc.IntegrityError) as failed:
            async with db.transaction() as session:
                await (await driver(session)).execute_all([
                    (insert, (2004, 4)),
                    ("UPDATE reference_counter SET value = value + 10 WHERE year = ?", (2001,)),
                    (insert, (2002, 9)),  # taken
                    (insert, (2005, 5)),
                ])
        assert "INSERT INTO reference_counter" in str(failed.value.statement)
        return rows, await _years(db)

    try:
        rows, stored = asyncio.run(scenario())
    finally:
        asyncio.run(db.dispose())
    assert rows == [[], [(2002, 2), (2003, 3)], [(3,)]]
    assert stored == [(2001, 1), (2002, 2), (2003, 3)]


@pytest.mark.parametrize("backend", ["postgresql"])
def test_driver_statements_outlive_a_rollback_after_orm_statements(db_url: str) -> None:
    """The driver prepares its statements on each connection. psycopg, which prepares a
    statement it has run five times, deallocates every prepared statement of a connection
    when a transaction on it rolls back, the driver's included: the next group of alerts on
    that connection then failed with "prepared statement does not exist"."""
    import asyncio

    from app.core.bulk import driver
    from app.core.db import Database

    db = Database(db_url, pool_size=1)  # one connection, used again and again
    table = sa.table("reference_counter", sa.column("year"), sa.column("value"))

    class Undo(Exception):
        pass

    async def scenario() -> list[tuple[int, int]]:
        for year in (2001, 2002):
            with pytest.raises(Undo):
                async with db.transaction() as session:
                    for _ in range(8):
                        await session.execute(sa.select(table.c.value).where(
                            table.c.year == year))
                    await (await driver(session)).execute_all([
                        ("INSERT INTO reference_counter (year, value) VALUES (?, ?)",
                         (year, 1)),
                        ("SELECT count(*) FROM reference_counter", ())])
                    raise Undo
        async with db.transaction() as session:
            await (await driver(session)).execute_all([
                ("INSERT INTO reference_counter (year, value) VALUES (?, ?)", (2003, 3)),
                ("SELECT count(*) FROM reference_counter", ())])
        return await _years(db)

    try:
        assert asyncio.run(scenario()) == [(2003, 3)]
    finally:
        asyncio.run(db.dispose())


@pytest.mark.parametrize("backend", ["postgresql"])
@pytest.mark.parametrize("way", ["pipeline", "copy"])
def test_a_write_cancelled_midway_leaves_the_database_usable(db_url: str, way: str) -> None:
    """A request cancelled while its statements run (a client gone, a shutdown), in a
    pipeline or sending rows by COPY, leaves no connection behind whose unread results the
    next transaction would take for its own."""
    import asyncio

    from app.core.bulk import COPY_MIN_ROWS, driver
    from app.core.db import Database
    from app.incidents.models import ReferenceCounter

    if way == "copy":
        engine = make_sync_engine(db_url)
        with engine.begin() as conn:  # each row takes 20 ms to go in
            conn.exec_driver_sql(
                "CREATE FUNCTION slow_row() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN PERFORM pg_sleep(0.02); RETURN NEW; END $$")
            conn.exec_driver_sql("CREATE TRIGGER slow BEFORE INSERT ON reference_counter "
                                 "FOR EACH ROW EXECUTE FUNCTION slow_row()")
        engine.dispose()
    db = Database(db_url, pool_size=1)

    async def slow() -> None:
        async with db.transaction() as session:
            if way == "copy":
                await insert_rows(session, table_of(ReferenceCounter), [
                    {"year": 3000 + i, "value": 1} for i in range(COPY_MIN_ROWS)])
                return
            await (await driver(session)).execute_all([
                ("INSERT INTO reference_counter (year, value) VALUES (?, ?)", (2001, 1)),
                ("SELECT pg_sleep(3)", ())])

    async def scenario() -> tuple[list[list[Any]], list[Any], float]:
        task = asyncio.create_task(slow())
        await asyncio.sleep(0.5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        loop = asyncio.get_running_loop()
        started = loop.time()
        async with db.transaction() as session:
            rows = await (await driver(session)).execute_all([
                ("SELECT ?::int", (7,)), ("SELECT ?::text", ("tám",))])
        return rows, await _years(db), loop.time() - started

    try:
        rows, stored, took = asyncio.run(scenario())
    finally:
        asyncio.run(db.dispose())
    assert rows == [[(7,)], [("tám",)]]
    assert stored == []  # the cancelled transaction's insert never committed
    assert took < 2.5  # not waiting for the abandoned statements to finish


@pytest.mark.parametrize("backend", ["postgresql"])
def test_prepared_statements_are_planned_again_once_old(
        db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A statement prepared on a nearly empty table would keep the plan chosen then: after a
    while it is prepared again (the old one deallocated), and answers the same."""
    import asyncio

    import psycopg

    from app.core import pgpipe

    dsn = db_url.replace("postgresql+psycopg://", "postgresql://")
    query = "SELECT count(*) FROM reference_counter WHERE year = ANY(?::int[])"
    listing = "SELECT statement FROM pg_prepared_statements WHERE statement LIKE ?"

    clock = SimpleNamespace(now=1000.0)
    monkeypatch.setattr(pgpipe, "time", SimpleNamespace(monotonic=lambda: clock.now))

    async def scenario() -> list[Any]:
        conn = await psycopg.AsyncConnection.connect(dsn, **pgpipe.CONNECT_ARGS)
        try:
            seen: list[Any] = []
            for round_ in range(3):
                if round_ == 2:
                    clock.now += pgpipe.REPLAN_FIRST_S + 0.1
                rows, prepared = await pgpipe.run(conn, [
                    (query, ("{1,2}",)), (listing, ("%reference_counter%",))], commit=True)
                seen.append((rows, len(prepared)))
                names = await pgpipe.run(conn, [
                    ("SELECT name FROM pg_prepared_statements WHERE statement LIKE ?",
                     ("%reference_counter WHERE%",))], commit=True)
                seen.append(names[0])
            return seen
        finally:
            await conn.close()

    first, first_names, second, second_names, third, third_names = asyncio.run(scenario())
    assert first == second == third == ([(0,)], 1)  # one prepared statement, same answer
    assert first_names == second_names != third_names  # prepared again in round 3
