"""SQLite settings for the Dagster instance's own storage, in the processes that load this code.

Dagster's default instance keeps runs and events in SQLite files under ``$DAGSTER_HOME`` in WAL
mode, and opens a new connection for every write (SQLAlchemy's NullPool). With SQLite's default
``synchronous=FULL`` each commit fsyncs, and each close of the last connection checkpoints the
WAL into the database and deletes it (more fsyncs). A run writes hundreds of events (every log
line of an asset is one), and on this project's machines that was 15-27 ms per event: seconds of
a local run (measured by ``bench/e2e.py``, "dagster: events written").

In the processes that import the code location (the CLI's run, ``dagster dev``'s run workers and
code server), every SQLite connection Dagster opens gets ``synchronous=NORMAL``, and the process
keeps one idle connection to each database file it has written to, so closing the others does not
checkpoint. In WAL mode NORMAL is what SQLite documents as always consistent: a crash of the
process loses nothing, a power cut may lose the last commits but never corrupts the database.
Checkpoints still happen, by SQLite's own rule (every 1,000 pages) and when the process exits.
``MLOPS_DAGSTER_SQLITE_DURABLE=1`` keeps SQLite's defaults (FULL, no held connection).

Dagster also opens each SQLite storage through alembic: a stamp when it creates the database, a
revision check when it opens one, and every run's event shard is a new database. Each time,
alembic read its ~100 migration scripts again: about 0.07 s per database, 0.25 s of the 0.5 s a
fresh instance took (and as much per run shard). The scripts are files of the installed Dagster,
so this process reads them once per script folder (``memoize_alembic_scripts``); the migrations
themselves (env.py) still run every time, as before.
"""

from __future__ import annotations

import atexit
import os
import sqlite3
import threading
from collections import OrderedDict

from alembic.config import Config as AlembicConfig
from alembic.script import ScriptDirectory
from sqlalchemy import event
from sqlalchemy.engine import Engine

DURABLE_ENV = "MLOPS_DAGSTER_SQLITE_DURABLE"

# Bounded, least recently opened first out: a long process (the test suite, a code server) meets
# many instances; closing an evicted connection only checkpoints that database.
MAX_HELD = 16
_held: OrderedDict[str, sqlite3.Connection] = OrderedDict()
_lock = threading.Lock()
_installed = False


def _database_file(connection: sqlite3.Connection) -> str | None:
    """The main database's file, or None for an in-memory database."""
    for _seq, name, path in connection.execute("PRAGMA database_list").fetchall():
        if name == "main":
            return path or None
    return None


def _on_connect(dbapi_connection, _record) -> None:
    if not isinstance(dbapi_connection, sqlite3.Connection):
        return  # another database (postgres/mysql instance storage): nothing to tune
    dbapi_connection.execute("PRAGMA synchronous=NORMAL")
    path = _database_file(dbapi_connection)
    if path is None:
        return
    with _lock:
        held = _held.get(path)
        if held is None:
            held = _held[path] = sqlite3.connect(path, check_same_thread=False)
            while len(_held) > MAX_HELD:
                _held.popitem(last=False)[1].close()
        _held.move_to_end(path)
        # A connection counts for WAL only once it has read in WAL mode (which Dagster may have
        # switched on after it was opened): a short read attaches it. It then stays idle, outside
        # any transaction, blocking no writer, reader or checkpoint.
        try:
            held.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
        except sqlite3.OperationalError:
            # Busy (a writer mid-commit before WAL was on): the next connection attaches it;
            # until then closes checkpoint as SQLite does by default. Nothing is lost either way.
            return


_scripts: dict[tuple, ScriptDirectory] = {}
_scripts_lock = threading.Lock()
_read_scripts = ScriptDirectory.from_config.__func__  # type: ignore[attr-defined]


def _script_directory(cls: type[ScriptDirectory], config: AlembicConfig) -> ScriptDirectory:
    """ScriptDirectory.from_config, once per configuration: its main section (script_location,
    version_locations, file_template...) is all a ScriptDirectory is made from. (Dagster's run,
    event log and schedule storages each have an alembic.ini, all naming the same scripts.)"""
    section = config.get_section(config.config_ini_section, {})
    key = (cls, tuple(sorted((k, v) for k, v in section.items() if k != "here")))  # here: the .ini's folder
    with _scripts_lock:
        script = _scripts.get(key)
        if script is None:
            script = _scripts[key] = _read_scripts(cls, config)
        return script


def memoize_alembic_scripts() -> None:
    """Read each alembic script folder once in this process (see the top)."""
    ScriptDirectory.from_config = classmethod(_script_directory)  # type: ignore[method-assign]


def install() -> bool:
    """Tune every SQLite connection SQLAlchemy opens in this process; False if turned off.
    Alembic's scripts are read once either way (nothing about durability changes)."""
    global _installed
    memoize_alembic_scripts()
    if os.environ.get(DURABLE_ENV, "").strip().lower() in {"1", "true", "yes"}:
        return False
    if not _installed:
        event.listen(Engine, "connect", _on_connect)
        _installed = True
    return True


@atexit.register
def _release() -> None:
    """Close the held connections: the last close of each database checkpoints its WAL."""
    with _lock:
        while _held:
            _held.popitem(last=False)[1].close()


def held_files() -> list[str]:
    """The database files this process keeps a connection to (for tests and diagnostics)."""
    with _lock:
        return sorted(_held)
