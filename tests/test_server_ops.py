"""Server operations: export (HTTP and CLI), backups (CLI and scheduled), retention."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest

from tests._server import ServerProcess
from tests.conftest import ServerFactory


def _events(n: int, *, days_ago: float = 0.0, prefix: str = "") -> list[dict[str, object]]:
    when = dt.datetime.now(dt.UTC) - dt.timedelta(days=days_ago)
    return [
        {
            "eventId": f"{prefix}{uuid.uuid4()}",
            "eventType": f"type{i % 3}",
            "sessionId": f"s{i % 5}",
            "timestamp": when.isoformat(),
            "properties": {"i": i, "text": 'comma, "quote"\nnewline'},
        }
        for i in range(n)
    ]


def _post(server: ServerProcess, events: list[dict[str, object]]) -> None:
    r = httpx.post(
        server.url + "/v1/events/batch",
        headers=server.headers("write"),
        json={"events": events},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    assert r.json()["accepted"] == len(events)


def _cli(server: ServerProcess, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "innkt_analytics", *args, "--db", server.db],
        capture_output=True,
        text=True,
        check=check,
        env={**os.environ, **server.env},
        timeout=120,
    )


def test_http_export_ndjson_and_csv_round_trip(server: ServerProcess) -> None:
    sent = _events(2300)  # more than one export page
    for i in range(0, len(sent), 1000):
        _post(server, sent[i : i + 1000])
    r = httpx.get(server.url + "/v1/export", headers=server.headers("read"), timeout=30)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in r.text.splitlines()]
    assert [e["eventId"] for e in lines] == [e["eventId"] for e in sent]
    assert lines[5]["properties"] == sent[5]["properties"]
    assert all("receivedAt" in e and "correctedTimestamp" in e for e in lines)

    r = httpx.get(
        server.url + "/v1/export",
        params={"format": "csv", "eventType": "type1"},
        headers=server.headers("read"),
        timeout=30,
    )
    rows = list(csv.DictReader(io.StringIO(r.text)))
    expected = [e for e in sent if e["eventType"] == "type1"]
    assert [row["eventId"] for row in rows] == [e["eventId"] for e in expected]
    assert json.loads(rows[0]["properties"]) == expected[0]["properties"]


def test_http_export_needs_read_scope_and_valid_format(server: ServerProcess) -> None:
    r = httpx.get(server.url + "/v1/export", headers=server.headers("write"))
    assert r.status_code == 403
    r = httpx.get(server.url + "/v1/export?format=xml", headers=server.headers("read"))
    assert r.status_code == 400
    assert r.json()["error"] == "invalid_parameter"


def test_http_export_is_limited_to_the_keys_project(server: ServerProcess) -> None:
    _post(server, _events(10))
    other_read = server.create_key("read", project="other")
    r = httpx.get(server.url + "/v1/export", headers={"Authorization": f"Bearer {other_read}"})
    assert r.status_code == 200
    assert r.text == ""


def test_cli_export_formats(server: ServerProcess, tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow.parquet", reason="the parquet extra is not installed")
    sent = _events(1500)
    _post(server, sent)
    out = tmp_path / "events.ndjson"
    result = _cli(server, "export", "--format", "ndjson", "-o", str(out))
    assert "exported 1500 events" in result.stderr
    ids = [json.loads(line)["eventId"] for line in out.read_text().splitlines()]
    assert ids == [e["eventId"] for e in sent]

    parquet = tmp_path / "events.parquet"
    _cli(server, "export", "--format", "parquet", "-o", str(parquet))
    table = pa.read_table(parquet)
    assert table.num_rows == 1500
    assert table.column("eventId").to_pylist() == ids

    bad = _cli(server, "export", "--format", "xml", "-o", "-", check=False)
    assert bad.returncode != 0
    assert "ndjson, csv or parquet" in bad.stderr


def test_backup_while_ingesting_then_verify_and_restore(
    server: ServerProcess, tmp_path: Path
) -> None:
    _post(server, _events(500))
    stop = threading.Event()
    errors: list[str] = []

    def writer() -> None:
        with httpx.Client(timeout=30) as client:
            while not stop.is_set():
                r = client.post(
                    server.url + "/v1/events/batch",
                    headers=server.headers("write"),
                    json={"events": _events(50)},
                )
                if r.status_code != 200:
                    errors.append(r.text)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        created = _cli(server, "backup", "create")
    finally:
        stop.set()
        thread.join()
    assert errors == []
    backup_id = created.stdout.split()[1].rstrip(":")
    listed = _cli(server, "backup", "list").stdout
    assert backup_id in listed
    verified = _cli(server, "backup", "verify", backup_id)
    assert "sha256 verified" in verified.stdout
    in_backup = int(created.stdout.split(":")[1].split()[0])
    assert in_backup >= 500

    # Restore refuses while the server holds the database open...
    refused = _cli(server, "backup", "restore", backup_id, check=False)
    assert refused.returncode != 0
    assert server.count_events() >= in_backup  # the live data is untouched
    # ...and works once it is stopped; the data is exactly the backup's.
    server.stop()
    _cli(server, "backup", "restore", backup_id)
    assert server.count_events() == in_backup
    server.start()
    r = httpx.get(server.url + "/v1/health", headers=server.headers("read"))
    assert r.json()["storage"]["events"] == in_backup


def test_backup_verify_detects_a_flipped_byte(server: ServerProcess) -> None:
    _post(server, _events(100))
    created = _cli(server, "backup", "create")
    backup_id = created.stdout.split()[1].rstrip(":")
    path = Path(server.db + ".backups") / f"{backup_id}.sqlite3"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    result = _cli(server, "backup", "verify", backup_id, check=False)
    assert result.returncode == 1
    assert "error" in result.stderr
    server.stop()
    restore = _cli(server, "backup", "restore", backup_id, check=False)
    assert restore.returncode == 1
    assert server.count_events() == 100


def test_scheduled_backups_are_taken_pruned_and_reported(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    backups = tmp_path / "backups"
    server = server_factory(
        env={
            "INNKT_BACKUP_INTERVAL": "0.3",
            "INNKT_BACKUP_DIR": str(backups),
            "INNKT_BACKUP_KEEP": "2",
        }
    )
    _post(server, _events(20))
    deadline = time.monotonic() + 20
    manifests: list[Path] = []
    while time.monotonic() < deadline:
        manifests = sorted(backups.glob("*.json")) if backups.exists() else []
        health = httpx.get(server.url + "/v1/health", headers=server.headers("admin")).json()
        last = health.get("backups", {}).get("last")
        if len(manifests) >= 2 and last and last["ok"] and last["records"] == 20:
            break
        time.sleep(0.2)
    else:
        pytest.fail(f"no scheduled backups: {manifests}")
    # Stopped, so no backup is between writing its manifest and pruning: the
    # history holds exactly INNKT_BACKUP_KEEP backups.
    server.stop()
    assert len(list(backups.glob("*.json"))) == 2
    assert len(list(backups.glob("*.sqlite3"))) == 2


def test_per_project_retention_deletes_old_events(server_factory: ServerFactory) -> None:
    server = server_factory(env={"INNKT_RETENTION_INTERVAL": "0.2"})
    other_write = server.create_key("write", project="keep")
    old, new = _events(30, days_ago=10), _events(20)
    _post(server, old + new)
    kept_old = _events(5, days_ago=10)
    r = httpx.post(
        server.url + "/v1/events/batch",
        headers={"Authorization": f"Bearer {other_write}"},
        json={"events": kept_old},
    )
    assert r.status_code == 200
    r = httpx.put(
        server.url + "/v1/config", headers=server.headers("admin"), json={"retentionDays": 7}
    )
    assert r.status_code == 200, r.text
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and server.count_events("default") != 20:
        time.sleep(0.1)
    assert server.event_ids("default") == [e["eventId"] for e in new]
    assert server.count_events("keep") == 5  # a project without a policy keeps everything
    # Each run reports the projects that have a policy, and only those. The count can
    # reach 20 while the run that deleted is still going (it reports when it ends).
    while True:
        health = httpx.get(server.url + "/v1/health", headers=server.headers("read")).json()
        deleted = set((health["retention"]["last"] or {}).get("deleted", ()))
        if deleted or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert deleted == {"default"}
