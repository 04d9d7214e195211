"""The `crisisflow` command."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from app.core.config import Settings, SettingsError, get_settings

T = TypeVar("T")

cli = typer.Typer(help="crisisflow: crisis-response workflow engine", no_args_is_help=True)
keys_cli = typer.Typer(help="Manage API keys", no_args_is_help=True)
agencies_cli = typer.Typer(help="Manage the agency directory", no_args_is_help=True)
workflows_cli = typer.Typer(help="Workflow definitions", no_args_is_help=True)
audit_cli = typer.Typer(help="Audit the incident record", no_args_is_help=True)
cli.add_typer(keys_cli, name="keys")
cli.add_typer(agencies_cli, name="agencies")
cli.add_typer(workflows_cli, name="workflows")
cli.add_typer(audit_cli, name="audit")


def _settings() -> Settings:
    try:
        return get_settings()
    except SettingsError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None


def _fail(message: str, code: int = 1) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _with_db(fn: Callable[[Any], Awaitable[T]]) -> T:
    """Run `fn(db)` on a fresh Database for this command."""
    from app.core.db import Database

    async def runner() -> T:
        db = Database(_settings().database_url, pool_size=2)
        try:
            return await fn(db)
        finally:
            await db.dispose()

    return asyncio.run(runner())


def _migrate(settings: Settings) -> None:
    from app.core.migrate import upgrade

    upgrade(settings.database_url)


@cli.command()
def migrate() -> None:
    """Upgrade the database to the newest revision."""
    settings = _settings()
    _migrate(settings)
    typer.echo("database at the newest revision", err=True)


async def _seed_if_empty(db: Any) -> int:
    from app.agencies.models import AgencyCreate
    from app.agencies.service import count_agencies, seed_records, upsert_many

    async with db.transaction() as session:
        if await count_agencies(session):
            return 0
        items = [AgencyCreate.model_validate(r) for r in seed_records()]
        created, _ = await upsert_many(session, items)
        return created


@cli.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to bind")] = 8000,
    workers: Annotated[int, typer.Option(min=1, help="API processes")] = 1,
    no_worker: Annotated[bool, typer.Option("--no-worker", help="Serve the API only")] = False,
) -> None:
    """Migrate, seed the agency directory if empty, then serve the API (and the worker)."""
    import uvicorn

    from app.core.cork import CorkedHttpToolsProtocol
    from app.core.logging import configure_logging

    settings = _settings()
    configure_logging(settings.log_level, settings.log_json)
    _migrate(settings)
    seeded = _with_db(_seed_if_empty)
    if seeded:
        typer.echo(f"seeded the agency directory with {seeded} agencies", err=True)
    factory = "app.asgi:app_with_worker" if not no_worker else "app.asgi:app_without_worker"
    ingest = None
    if settings.uses_ingest_process:
        from app.alerts.remote import IngestProcess

        ingest = IngestProcess()
        ingest.start()
        # The API processes (this one, or uvicorn's spawned workers) read it from the
        # environment when their app starts.
        os.environ["CRISISFLOW_INGEST_SOCKET"] = ingest.path
        get_settings.cache_clear()
        # uvicorn re-raises the SIGTERM it handled once it has shut down; ending here
        # instead lets the ingest process finish its group and stop too.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        uvicorn.run(
            factory,
            host=host,
            port=port,
            workers=workers,
            factory=True,
            access_log=False,
            log_config=None,
            proxy_headers=False,
            http=CorkedHttpToolsProtocol,
            # Open event streams would otherwise hold a restart until their next heartbeat.
            timeout_graceful_shutdown=5,
        )
    finally:
        if ingest is not None:
            ingest.stop()


@cli.command()
def worker() -> None:
    """Run the delivery and deadline worker alone (scale-out against PostgreSQL)."""
    from app.core.logging import configure_logging
    from app.worker import run_forever

    settings = _settings()
    configure_logging(settings.log_level, settings.log_json)
    _migrate(settings)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run_forever(settings))


@keys_cli.command("create")
def keys_create(
    name: Annotated[str, typer.Option(help="Who holds the key")],
    role: Annotated[str, typer.Option(help="admin, duty_officer, leader, monitor or viewer")],
    agency: Annotated[str | None, typer.Option(help="Agency scope (viewer keys)")] = None,
    signing_secret: Annotated[
        str | None, typer.Option(help="whsec_… secret: monitor requests must be signed")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one line of JSON")] = False,
) -> None:
    """Create an API key; the key is printed once and only its hash is stored."""
    from pydantic import ValidationError

    from app.auth.models import ApiKeyCreate
    from app.auth.service import create_key
    from app.core.errors import ProblemError
    from app.core.jsonutil import dumps

    try:
        key_in = ApiKeyCreate(name=name, role=role, agency=agency, signing_secret=signing_secret)  # type: ignore[arg-type]
    except ValidationError as exc:
        err = exc.errors()[0]
        _fail(f"--{'-'.join(str(p) for p in err['loc'])}: {err['msg']}", 2)

    async def run(db: Any) -> Any:
        async with db.transaction() as session:
            return await create_key(session, key_in)

    try:
        created = _with_db(run)
    except ProblemError as exc:
        _fail(exc.detail, 2)
    if as_json:
        sys.stdout.write(dumps(created.model_dump(mode="json")).decode() + "\n")
    else:
        typer.echo(f"created {created.role.value} key {created.id} ({created.name})", err=True)
        typer.echo("store it now: it is not shown again", err=True)
        typer.echo(created.key)


@keys_cli.command("list")
def keys_list() -> None:
    """List API keys (never the keys themselves)."""
    from app.auth.service import list_keys

    async def run(db: Any) -> Any:
        async with db.read() as session:
            return await list_keys(session)

    rows = _with_db(run)
    typer.echo(f"{'ID':36}  {'PREFIX':10}  {'ROLE':12}  {'AGENCY':10}  {'STATUS':8}  NAME")
    for r in rows:
        status = "revoked" if r.revoked_at else "active"
        agency = r.agency or "-"
        role = r.role.value
        typer.echo(f"{r.id:36}  {r.prefix:10}  {role:12}  {agency:10}  {status:8}  {r.name}")


@keys_cli.command("revoke")
def keys_revoke(key_id: Annotated[str, typer.Argument(help="Key id (or its prefix)")]) -> None:
    """Revoke an API key; it stops working at once."""
    from app.auth.service import revoke_key
    from app.core.errors import ProblemError

    async def run(db: Any) -> Any:
        async with db.transaction() as session:
            return await revoke_key(session, key_id)

    try:
        row = _with_db(run)
    except ProblemError as exc:
        _fail(exc.detail)
    typer.echo(f"revoked {row.id} ({row.name})")


@agencies_cli.command("seed")
def agencies_seed() -> None:
    """Load (or refresh) the shipped seed directory."""
    from app.agencies.models import AgencyCreate
    from app.agencies.service import seed_records, upsert_many

    items = [AgencyCreate.model_validate(r) for r in seed_records()]

    async def run(db: Any) -> Any:
        async with db.transaction() as session:
            return await upsert_many(session, items)

    created, updated = _with_db(run)
    typer.echo(f"seed directory: {created} created, {updated} updated")


@agencies_cli.command("import")
def agencies_import(
    file: Annotated[Path, typer.Argument(help="A .csv or .json file of agencies")],
) -> None:
    """Import agencies from CSV (code,name,name_en,kind,parent,note) or JSON."""
    from app.agencies.service import ImportError_, parse_agency_file, upsert_many
    from app.core.errors import ProblemError

    try:
        items = parse_agency_file(file)
    except ImportError_ as exc:
        _fail(str(exc), 2)

    async def run(db: Any) -> Any:
        async with db.transaction() as session:
            return await upsert_many(session, items)

    try:
        created, updated = _with_db(run)
    except ProblemError as exc:
        _fail(f"{file}: {exc.detail}", 2)
    typer.echo(f"{file}: {created} created, {updated} updated")


@workflows_cli.command("check")
def workflows_check(
    paths: Annotated[
        list[Path] | None,
        typer.Argument(help="Definition files or directories (default: the shipped ones)"),
    ] = None,
) -> None:
    """Validate workflow definitions and print their states and transitions."""
    import app.incidents.actions  # noqa: F401  (registers the actions definitions name)
    from workflows.engine import DefinitionError, WorkflowRegistry, definition_files, load_file

    files = definition_files(paths or None)
    if not files:
        _fail(f"no workflow definitions (*.yaml, *.yml) in {', '.join(map(str, paths or []))}")
    loaded = []
    for file in files:
        if not file.is_file():
            _fail(f"{file}: no such file")
        try:
            loaded.append(load_file(file))
        except DefinitionError as exc:
            _fail(str(exc))
    try:
        WorkflowRegistry(loaded)  # the set as a whole: no name and version twice
    except DefinitionError as exc:
        _fail(str(exc))
    for wf in loaded:
        typer.echo(f"{wf.name} v{wf.version}  ({wf.source})")
        marks = {wf.initial: " (initial)", **{s: " (final)" for s in wf.final}}
        typer.echo("  states: " + ", ".join(f"{s}{marks.get(s, '')}" for s in wf.states))
        typer.echo("  transitions:")
        for t in wf.transitions:
            dest = "(same state)" if t.dest == "=" else t.dest
            extra = f"  [guards: {', '.join(t.guards)}]" if t.guards else ""
            extra += "  (internal)" if t.internal else ""
            typer.echo(f"    {t.trigger}: {', '.join(t.sources)} -> {dest}{extra}")
    typer.echo(f"ok: {len(loaded)} definition(s) valid", err=True)


@audit_cli.command("verify")
def audit_verify(
    batch_size: Annotated[int, typer.Option(min=1, help="Incidents per read")] = 500,
) -> None:
    """Walk every incident's hash-chained timeline; exit 1 at the first broken link."""
    import time

    from sqlalchemy.exc import DBAPIError

    from app.incidents.timeline import verify_all

    started = last = time.monotonic()

    def progress(done: int, total: int) -> None:
        nonlocal last
        now = time.monotonic()
        if now - last >= 2.0:
            last = now
            typer.echo(f"verified {done}/{total} incidents ({now - started:.0f} s)", err=True)

    try:
        result = _with_db(lambda db: verify_all(db, batch_size=batch_size, progress=progress))
    except DBAPIError as exc:  # exit 2: could not check at all (1 means a broken chain)
        _fail(f"cannot read the incident record ({type(exc.orig).__name__}: "
              f"{str(exc.orig).strip()}); is the database migrated? (crisisflow migrate)", 2)
    if result.broken is not None:
        b = result.broken
        typer.echo(f"BROKEN: {b.reference} (incident {b.incident_id}) seq {b.seq}: {b.reason}")
        raise typer.Exit(1)
    typer.echo(f"{result.incidents} incidents, {result.entries} entries verified")


def main() -> None:
    cli()
