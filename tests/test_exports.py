"""The public API of ``innkt_analytics``: what ``__all__`` promises must hold.

The list grows as features land, so this pins invariants, not an exact list.
"""

from __future__ import annotations

import importlib
import inspect
import re
import types
from pathlib import Path

import pytest

import innkt_analytics
from innkt_analytics import InnktError


def isort_key(name: str) -> tuple[int, list[tuple[int, int | str]]]:
    """The order ruff's RUF022 enforces: CONSTANTS, then Classes, then the rest,
    each in natural order (digit runs compare as numbers)."""
    if len(name) > 1 and name == name.upper() and name != name.lower():
        kind = 0
    elif name[:1].isupper():
        kind = 1
    else:
        kind = 2
    parts = re.findall(r"\d+|\D+", name)
    return kind, [(0, int(p)) if p.isdigit() else (1, p) for p in parts]


def test_isort_key_matches_ruffs_order() -> None:
    names = ["__version__", "configure", "Event", "MAX_SIZE", "Batch", "a10", "a9", "B2", "B10"]
    assert sorted(names, key=isort_key) == [
        "B2",  # all capitals: a constant, as ruff sees it
        "B10",
        "MAX_SIZE",
        "Batch",
        "Event",
        "__version__",
        "a9",
        "a10",
        "configure",
    ]


def test_all_is_sorted_and_unique() -> None:
    names = innkt_analytics.__all__
    assert isinstance(names, list)
    assert len(names) == len(set(names)), "duplicates in __all__"
    assert names == sorted(names, key=isort_key)


def test_every_name_in_all_is_importable() -> None:
    module = importlib.import_module("innkt_analytics")
    for name in innkt_analytics.__all__:
        assert hasattr(module, name), f"__all__ lists {name!r} but the package lacks it"
        assert getattr(module, name) is not None


def test_no_private_names_are_exported() -> None:
    private = [
        n
        for n in innkt_analytics.__all__
        if n.startswith("_") and not (n.startswith("__") and n.endswith("__"))
    ]
    assert private == []


def test_public_names_of_the_package_are_all_exported() -> None:
    """A name imported into the package without a place in ``__all__`` is a mistake."""
    unlisted = [
        name
        for name, value in vars(innkt_analytics).items()
        if not name.startswith("_")
        and not isinstance(value, types.ModuleType)
        and name not in innkt_analytics.__all__
        and name != "annotations"  # from __future__ import annotations
    ]
    assert unlisted == []


def test_exported_exceptions_share_one_tree() -> None:
    exceptions = [
        getattr(innkt_analytics, n)
        for n in innkt_analytics.__all__
        if inspect.isclass(getattr(innkt_analytics, n))
        and issubclass(getattr(innkt_analytics, n), BaseException)
    ]
    assert InnktError in exceptions
    for exc in exceptions:
        assert issubclass(exc, InnktError), f"{exc.__name__} is outside the InnktError tree"


def test_version_and_typing_marker() -> None:
    assert re.fullmatch(r"\d+\.\d+\.\d+([.\-+]\w+)*", innkt_analytics.__version__)
    assert "__version__" in innkt_analytics.__all__
    package_dir = Path(innkt_analytics.__file__).parent
    assert (package_dir / "py.typed").exists()


@pytest.mark.parametrize("name", ["Event", "Batch", "ClientConfig", "IngestResponse"])
def test_wire_types_are_exported(name: str) -> None:
    # The wire types are the contract between SDK and server; they are public.
    assert name in innkt_analytics.__all__


def test_the_exception_tree_drawn_is_the_tree_defined() -> None:
    """Every class the ``_exceptions`` docstring draws subclasses the one drawn above it."""
    from innkt_analytics.server import _state
    from innkt_analytics.shared import _exceptions, _protocol

    modules = (_exceptions, _protocol, _state)
    doc = _exceptions.__doc__ or ""
    # The column a name starts at is its depth: "│   ├── " prefixes are tree, not text.
    drawn = re.findall(r"^([ │├└─]*)(\w+Error)\b", doc, re.MULTILINE)
    assert [name for _, name in drawn][:2] == ["InnktError", "ConfigError"]
    parents: list[tuple[int, type]] = []
    for indent, name in drawn:
        cls = next(getattr(m, name) for m in modules if hasattr(m, name))
        depth = len(indent)
        while parents and parents[-1][0] >= depth:
            parents.pop()
        if parents:
            assert issubclass(cls, parents[-1][1]), f"{name} is drawn under {parents[-1][1]}"
        parents.append((depth, cls))
    assert {name for _, name in drawn} >= {"ProtocolError", "ApiError"}


def test_one_rule_says_the_disk_is_full() -> None:
    """The SDK's queue and backups and the server's SQLite writer process agree."""
    import errno
    import sqlite3

    from innkt_analytics.server.storage import _sqlite_writer
    from innkt_analytics.shared._exceptions import is_disk_full

    full = sqlite3.OperationalError("database or disk is full")
    full.sqlite_errorcode = sqlite3.SQLITE_FULL  # type: ignore[attr-defined]
    locked = sqlite3.OperationalError("database is locked")
    locked.sqlite_errorcode = sqlite3.SQLITE_BUSY  # type: ignore[attr-defined]
    cases = {
        full: True,
        sqlite3.OperationalError("database or disk is full"): True,
        locked: False,
        OSError(errno.ENOSPC, "No space left on device"): True,
        OSError(errno.EDQUOT, "Disk quota exceeded"): True,
        OSError(errno.EIO, "I/O error"): False,
        ValueError("full"): False,
    }
    for exc, expected in cases.items():
        assert is_disk_full(exc) is expected, exc
        assert (_sqlite_writer.error_of(exc)[0] == "full") is expected, exc
