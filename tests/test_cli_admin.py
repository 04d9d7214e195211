"""`crisisflow keys` and `crisisflow agencies`, as operators and scripts use them."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from app.cli import cli
from app.core.config import get_settings

Invoke = Callable[..., Any]


@pytest.fixture
def run(db_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Invoke]:
    monkeypatch.setenv("CRISISFLOW_DATABASE_URL", db_url)
    get_settings.cache_clear()
    runner = CliRunner()

    def invoke(*args: str) -> Any:
        return runner.invoke(cli, list(args))

    yield invoke
    get_settings.cache_clear()


def test_keys_create_json_list_and_revoke(run: Invoke) -> None:
    out = run("agencies", "seed")
    assert out.exit_code == 0 and "66 created" in out.stdout
    made = run("keys", "create", "--name", "Trực ban", "--role", "duty_officer", "--json")
    assert made.exit_code == 0, made.output
    lines = made.stdout.strip().splitlines()
    assert len(lines) == 1  # exactly one line of compact JSON and nothing else
    body = json.loads(lines[0])
    assert set(body) == {"id", "name", "role", "key"} and body["role"] == "duty_officer"
    assert body["name"] == "Trực ban"
    plain = run("keys", "create", "--name", "viewer", "--role", "viewer", "--agency", "MOH")
    assert plain.exit_code == 0
    key = plain.stdout.strip().splitlines()[-1]  # the key alone on the last line
    assert key.startswith("cf_") and " " not in key
    listed = run("keys", "list")
    assert listed.exit_code == 0
    assert "Trực ban" in listed.stdout and "MOH" in listed.stdout
    assert body["key"] not in listed.stdout and key not in listed.stdout
    revoked = run("keys", "revoke", body["id"])
    assert revoked.exit_code == 0
    assert "revoked" in run("keys", "list").stdout
    missing = run("keys", "revoke", "no-such-key")
    assert missing.exit_code == 1 and "no API key" in missing.output


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("--role", "emperor"), "role"),
        (("--role", "monitor", "--signing-secret", "plain"), "whsec_"),
        (("--role", "viewer", "--agency", "NOPE"), "NOPE"),
    ],
)
def test_keys_create_refuses_bad_input(run: Invoke, args: tuple[str, ...],
                                       needle: str) -> None:
    run("agencies", "seed")
    out = run("keys", "create", "--name", "x", *args)
    assert out.exit_code == 2, out.output
    assert needle in out.output
    assert "Traceback" not in out.output


def test_agencies_import_csv_and_json(run: Invoke, tmp_path: Path) -> None:
    run("agencies", "seed")
    csv_file = tmp_path / "so.csv"
    csv_file.write_text("code,name,name_en,kind,parent\n"
                        "SO-YT-HN,Sở Y tế Hà Nội,Hanoi Health Department,other,P-HANOI\n"
                        "MOH,Bộ Y tế,Ministry of Health,ministry,\n", encoding="utf-8")
    out = run("agencies", "import", str(csv_file))
    assert out.exit_code == 0, out.output
    assert "1 created, 1 updated" in out.stdout
    json_file = tmp_path / "more.json"
    json_file.write_text(json.dumps([{"code": "BAO-ND", "name": "Báo Nhân Dân",
                                      "kind": "press"}], ensure_ascii=False), encoding="utf-8")
    assert "1 created" in run("agencies", "import", str(json_file)).stdout


@pytest.mark.parametrize(
    ("name", "content", "needle"),
    [
        ("bad.csv", "code,name,kind\nOK-1,Tốt,other\nBAD-2,Xấu,castle\n", "bad.csv:3: kind"),
        ("head.csv", "id,title\n1,x\n", "header must name"),
        ("bad.json", '[{"code": "A1", "name": "x", "kind": "other"}, {"code": "A2"}]',
         "item 1"),
        ("broken.json", '[{"code": ', "not valid JSON"),
        ("orphan.csv", "code,name,kind,parent\nKID-1,Con,other,NO-PARENT\n", "NO-PARENT"),
        ("agencies.txt", "whatever", ".csv or .json"),
    ],
)
def test_agencies_import_errors_name_the_line(run: Invoke, tmp_path: Path, name: str,
                                              content: str, needle: str) -> None:
    run("agencies", "seed")
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    out = run("agencies", "import", str(path))
    assert out.exit_code == 2, out.output
    assert needle in out.output
    assert "Traceback" not in out.output
