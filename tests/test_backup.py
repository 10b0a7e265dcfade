"""The generic SQLite backup module, on a plain database of its own (not the SDK store)."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from innkt_analytics import IntegrityError, StorageError, StorageFullError
from innkt_analytics.shared._backup import (
    BackupManifest,
    create_backup,
    list_backups,
    prune_backups,
    restore_backup,
    sha256_file,
    verify_backup,
)

_MAKE_DB = """
import os, sqlite3, sys
path, rows, tag = sys.argv[1], int(sys.argv[2]), sys.argv[3]
payload, crash = int(sys.argv[4]), sys.argv[5] == "1"
conn = sqlite3.connect(path, isolation_level=None)
conn.execute("PRAGMA journal_mode = WAL")
conn.execute("PRAGMA wal_autocheckpoint = 0")
conn.execute("PRAGMA user_version = 3")
conn.execute("CREATE TABLE IF NOT EXISTS items (id INTEGER PRIMARY KEY, tag TEXT, body BLOB)")
conn.execute("BEGIN")
conn.executemany(
    "INSERT INTO items (tag, body) VALUES (?, ?)", ((tag, os.urandom(payload)) for _ in range(rows))
)
conn.execute("COMMIT")
if crash:
    os._exit(0)  # no close, no checkpoint: the commits stay in the -wal, as after a crash
conn.close()
"""


def make_db(
    path: Path, rows: int, *, tag: str = "old", payload: int = 100, crash: bool = False
) -> None:
    """A WAL database with ``rows`` more rows tagged ``tag``.

    With ``crash`` the writer dies without closing, leaving its commits in the -wal.
    """
    args = [str(path), str(rows), tag, str(payload), "1" if crash else "0"]
    subprocess.run([sys.executable, "-c", _MAKE_DB, *args], check=True)


def content(path: Path) -> tuple[int, set[str], str]:
    """(row count, tags, integrity_check) of a database, read without changing it.

    Read-only, so closing does not checkpoint: a -wal stays as it was.
    """
    conn = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True)
    try:
        count = conn.execute("SELECT count(*) FROM items").fetchone()[0]
        tags = {r[0] for r in conn.execute("SELECT DISTINCT tag FROM items")}
        check = conn.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        conn.close()
    return count, tags, check


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "live.sqlite3"
    make_db(path, 500, crash=True)
    return path


@pytest.fixture
def backup_dir(tmp_path: Path) -> Path:
    return tmp_path / "backups"


def test_backup_file_and_manifest(db: Path, backup_dir: Path) -> None:
    assert Path(f"{db}-wal").stat().st_size > 0  # the copy must include what is only in the WAL
    m = create_backup(
        db, backup_dir, count_table="items", compressed=True, labels={"owner": "server"}
    )
    path = backup_dir / m.file
    assert m.record_count == 500
    assert m.schema_version == 3
    assert m.compressed
    assert not m.encrypted
    assert m.labels == {"owner": "server"}
    assert m.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert m.size_bytes == path.stat().st_size
    # One self-contained file: rollback-journal mode, nothing beside it.
    assert sorted(p.name for p in backup_dir.iterdir()) == sorted([m.file, m.backup_id + ".json"])
    assert path.read_bytes()[18:20] == b"\x01\x01"
    on_disk = msgspec.json.decode((backup_dir / f"{m.backup_id}.json").read_bytes())
    assert on_disk["recordCount"] == 500
    assert on_disk["sha256"] == m.sha256
    assert content(path) == (500, {"old"}, "ok")
    assert verify_backup(backup_dir, m.backup_id) == m


def test_list_is_newest_first_and_ignores_incomplete_backups(db: Path, backup_dir: Path) -> None:
    ids = [create_backup(db, backup_dir).backup_id for _ in range(3)]
    (backup_dir / "20990101T000000000000Z-ffffff.sqlite3.tmp").write_bytes(b"half")
    (backup_dir / "20990101T000000000000Z-eeeeee.sqlite3").write_bytes(b"no manifest")
    (backup_dir / "20990101T000000000000Z-dddddd.json").write_bytes(b"{not json")
    assert [m.backup_id for m in list_backups(backup_dir)] == ids[::-1]
    assert list_backups(backup_dir / "missing") == []


def test_prune_keeps_the_newest(db: Path, backup_dir: Path) -> None:
    ids = [create_backup(db, backup_dir).backup_id for _ in range(4)]
    orphan = backup_dir / "20000101T000000000000Z-000000.sqlite3.tmp"
    orphan.write_bytes(b"left by a crash")
    os.utime(orphan, (0, 0))
    fresh_orphan = backup_dir / "20000101T000000000000Z-111111.sqlite3.tmp"
    fresh_orphan.write_bytes(b"maybe still being written")
    assert prune_backups(backup_dir, 2) == ids[:2][::-1]
    assert [m.backup_id for m in list_backups(backup_dir)] == ids[2:][::-1]
    assert not (backup_dir / f"{ids[0]}.sqlite3").exists()
    assert not orphan.exists()
    assert fresh_orphan.exists()
    m = create_backup(db, backup_dir, max_backups=1)
    assert [b.backup_id for b in list_backups(backup_dir)] == [m.backup_id]
    with pytest.raises(ValueError, match="keep"):
        prune_backups(backup_dir, 0)


@pytest.fixture
def backup(db: Path, backup_dir: Path) -> BackupManifest:
    return create_backup(db, backup_dir, count_table="items")


@pytest.mark.parametrize("where", [0, 100, 0.5, -1])
def test_flipped_byte_is_detected(backup_dir: Path, backup: BackupManifest, where: float) -> None:
    path = backup_dir / backup.file
    data = bytearray(path.read_bytes())
    pos = int(len(data) * where) if isinstance(where, float) else where
    data[pos] ^= 0x01
    path.write_bytes(data)
    with pytest.raises(IntegrityError, match="SHA-256 mismatch"):
        verify_backup(backup_dir, backup.backup_id)


@pytest.mark.parametrize("keep", [0, 1, 4096])
def test_truncation_and_extension_are_detected(
    backup_dir: Path, backup: BackupManifest, keep: int
) -> None:
    path = backup_dir / backup.file
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 1 - keep])
    with pytest.raises(IntegrityError, match="truncated"):
        verify_backup(backup_dir, backup.backup_id)
    path.write_bytes(data + b"\x00")
    with pytest.raises(IntegrityError, match="appended"):
        verify_backup(backup_dir, backup.backup_id)


def rewrite_manifest(backup_dir: Path, m: BackupManifest, **changes: object) -> None:
    new = msgspec.structs.replace(m, **changes)
    (backup_dir / f"{m.backup_id}.json").write_bytes(msgspec.json.encode(new))


def test_integrity_check_catches_damage_the_manifest_agrees_with(
    backup_dir: Path, backup: BackupManifest
) -> None:
    # A damaged file whose manifest was regenerated to match: only SQLite can tell.
    path = backup_dir / backup.file
    data = bytearray(path.read_bytes())
    page_size = int.from_bytes(data[16:18], "big")
    data[page_size * 2 : page_size * 2 + 64] = b"\xff" * 64  # scribble over a b-tree page
    path.write_bytes(data)
    rewrite_manifest(backup_dir, backup, sha256=sha256_file(path))
    with pytest.raises(IntegrityError, match=r"integrity_check|not a valid database"):
        verify_backup(backup_dir, backup.backup_id)
    # The cheap check alone (size + hash) passes such a file.
    verify_backup(backup_dir, backup.backup_id, integrity_check=False)


def test_record_count_and_schema_version_are_checked(
    backup_dir: Path, backup: BackupManifest
) -> None:
    rewrite_manifest(backup_dir, backup, record_count=499)
    with pytest.raises(IntegrityError, match="holds 500 records, manifest says 499"):
        verify_backup(backup_dir, backup.backup_id)
    rewrite_manifest(backup_dir, backup, schema_version=4)
    with pytest.raises(IntegrityError, match="schema version 3"):
        verify_backup(backup_dir, backup.backup_id)


def test_missing_pieces_and_bad_ids(backup_dir: Path, backup: BackupManifest) -> None:
    with pytest.raises(IntegrityError, match="invalid backup id"):
        verify_backup(backup_dir, "../live")
    with pytest.raises(IntegrityError, match="not found"):
        verify_backup(backup_dir, "20000101T000000000000Z-000000")
    (backup_dir / backup.file).unlink()
    with pytest.raises(IntegrityError, match="missing"):
        verify_backup(backup_dir, backup.backup_id)
    (backup_dir / f"{backup.backup_id}.json").write_text("{}")
    with pytest.raises(IntegrityError, match="corrupt"):
        verify_backup(backup_dir, backup.backup_id)


def test_restore_replaces_live_data_including_its_wal(
    db: Path, backup_dir: Path, backup: BackupManifest
) -> None:
    make_db(db, 300, tag="newer", crash=True)  # only in the live -wal
    assert content(db)[0] == 800
    assert Path(f"{db}-wal").stat().st_size > 0
    assert restore_backup(db, backup_dir, backup.backup_id) == backup
    assert not Path(f"{db}-wal").exists()
    assert not Path(f"{db}.restore-tmp").exists()
    assert content(db) == (500, {"old"}, "ok")


def test_damaged_backup_is_refused_and_live_data_untouched(
    db: Path, backup_dir: Path, backup: BackupManifest
) -> None:
    make_db(db, 10, tag="newer")
    before = content(db)
    path = backup_dir / backup.file
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(IntegrityError):
        restore_backup(db, backup_dir, backup.backup_id)
    assert content(db) == before == (510, {"old", "newer"}, "ok")
    assert not Path(f"{db}.restore-tmp").exists()


def test_restore_refused_while_the_database_is_open(
    db: Path, backup_dir: Path, backup: BackupManifest
) -> None:
    make_db(db, 10, tag="newer")
    holder = sqlite3.connect(db)
    holder.execute("SELECT count(*) FROM items").fetchone()
    holder.execute("BEGIN")
    holder.execute("SELECT count(*) FROM items").fetchone()  # a live read transaction
    try:
        with pytest.raises(StorageError, match=r"in use|open elsewhere|close"):
            restore_backup(db, backup_dir, backup.backup_id)
    finally:
        holder.close()
    assert content(db) == (510, {"old", "newer"}, "ok")


def test_check_hook_can_refuse_and_leaves_live_data(
    db: Path, backup_dir: Path, backup: BackupManifest
) -> None:
    seen: list[Path] = []

    def refuse(path: Path) -> None:
        seen.append(path)
        assert content(path)[0] == 500  # it is handed the verified copy
        raise IntegrityError("not ours")

    make_db(db, 10, tag="newer")
    with pytest.raises(IntegrityError, match="not ours"):
        restore_backup(db, backup_dir, backup.backup_id, check=refuse)
    assert len(seen) == 1
    assert not seen[0].exists()
    assert content(db) == (510, {"old", "newer"}, "ok")


def test_unwritable_temp_file_fails_restore_cleanly(
    db: Path, backup_dir: Path, backup: BackupManifest
) -> None:
    make_db(db, 10, tag="newer")
    # A directory where the copy must go: unwritable even for root.
    Path(f"{db}.restore-tmp").mkdir()
    with pytest.raises(StorageError, match="restore of"):
        restore_backup(db, backup_dir, backup.backup_id)
    assert content(db) == (510, {"old", "newer"}, "ok")


_RESTORE_SCRIPT = """
import sys
from innkt_analytics.shared._backup import restore_backup
restore_backup(sys.argv[1], sys.argv[2], sys.argv[3])
print("restored", flush=True)
"""


@pytest.fixture
def big_backup(tmp_path: Path) -> tuple[Path, BackupManifest]:
    source = tmp_path / "source.sqlite3"
    make_db(source, 60_000, tag="new", payload=400)  # ~30 MB: copying takes a while
    bdir = tmp_path / "big-backups"
    return bdir, create_backup(source, bdir, count_table="items")


@pytest.mark.parametrize("delay", [0.0, 0.01, 0.03, 0.08, 0.2])
def test_restore_killed_at_any_point_leaves_old_or_new_never_a_mix(
    db: Path, big_backup: tuple[Path, BackupManifest], delay: float
) -> None:
    bdir, manifest = big_backup
    make_db(db, 10, tag="newer", crash=True)  # the live database has WAL content too
    before = content(db)
    proc = subprocess.Popen(
        [sys.executable, "-c", _RESTORE_SCRIPT, str(db), str(bdir), manifest.backup_id],
        stdout=subprocess.PIPE,
    )
    tmp = Path(f"{db}.restore-tmp")
    deadline = time.monotonic() + 60
    while not tmp.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.001)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    after = content(db)
    assert after in (before, (60_000, {"new"}, "ok"))
    # The next restore clears what the killed one left and completes.
    restore_backup(db, bdir, manifest.backup_id)
    assert content(db) == (60_000, {"new"}, "ok")
    assert not tmp.exists()


def _mount_tmpfs(path: Path, size: str) -> None:
    path.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs to fill a disk (needs root): {result.stderr.strip()}")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "small-disk"
    _mount_tmpfs(mnt, "2m")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_backup_to_a_full_disk_is_a_clear_error_and_leaves_nothing(
    tmp_path: Path, small_disk: Path
) -> None:
    source = tmp_path / "source.sqlite3"
    make_db(source, 10_000, payload=400)  # ~5 MB, more than the 2 MB disk
    with pytest.raises(StorageFullError, match="disk full"):
        create_backup(source, small_disk, count_table="items")
    assert list(small_disk.iterdir()) == []
    assert content(source) == (10_000, {"old"}, "ok")


def test_restore_onto_a_full_disk_leaves_the_live_database(
    tmp_path: Path, small_disk: Path
) -> None:
    source = tmp_path / "source.sqlite3"
    make_db(source, 10_000, payload=400)
    bdir = tmp_path / "backups"
    manifest = create_backup(source, bdir, count_table="items")
    live = small_disk / "live.sqlite3"
    make_db(live, 100)
    with pytest.raises(StorageFullError):
        restore_backup(live, bdir, manifest.backup_id)
    assert content(live) == (100, {"old"}, "ok")
    assert sorted(p.name for p in small_disk.iterdir() if not p.name.endswith("-shm")) in (
        ["live.sqlite3"],
        ["live.sqlite3", "live.sqlite3-wal"],
    )


def test_backup_of_a_missing_database_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="no database"):
        create_backup(tmp_path / "nope.sqlite3", tmp_path / "b")
    with pytest.raises(ValueError, match="identifier"):
        create_backup(tmp_path / "nope.sqlite3", tmp_path / "b", count_table="x; DROP")


def test_backup_copies_a_consistent_snapshot_while_another_process_writes(
    tmp_path: Path, backup_dir: Path
) -> None:
    db = tmp_path / "busy.sqlite3"
    make_db(db, 20_000, payload=200)
    writer = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sqlite3, sys\n"
            "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
            "c.execute('PRAGMA busy_timeout = 5000')\n"
            "for i in range(100000):\n"
            "    c.execute('INSERT INTO items (tag, body) VALUES (?, ?)', ('w', b'x' * 50))\n",
            str(db),
        ]
    )
    try:
        time.sleep(0.2)
        manifests = [create_backup(db, backup_dir, count_table="items") for _ in range(3)]
    finally:
        writer.kill()
        writer.wait()
    counts = [m.record_count or 0 for m in manifests]
    for m in manifests:
        verify_backup(backup_dir, m.backup_id)
    assert counts == sorted(counts)
    assert counts[0] >= 20_000


def test_module_takes_plain_paths_too(tmp_path: Path, db: Path) -> None:
    m = create_backup(str(db), str(tmp_path / "b"))
    assert verify_backup(str(tmp_path / "b"), m.backup_id).record_count is None
    shutil.rmtree(tmp_path / "b")
