"""The SQLite tuning of the Dagster instance's storage (mlops_dagster/instance_storage.py)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from mlops_dagster import instance_storage


def _synchronous(engine) -> int:
    with engine.connect() as connection:
        return connection.execute(text("PRAGMA synchronous")).scalar()


def test_dagster_sqlite_connections_commit_without_fsync_and_keep_a_connection(tmp_path):
    assert instance_storage.install()  # the code location's import installed it already: idempotent
    path = tmp_path / "runs.db"
    engine = create_engine(f"sqlite:///{path}", poolclass=NullPool)  # as Dagster's sqlite storage does
    with engine.begin() as connection:
        connection.execute(text("PRAGMA journal_mode=WAL"))
        connection.execute(text("CREATE TABLE events (id INTEGER)"))
        connection.execute(text("INSERT INTO events VALUES (1)"))
    assert _synchronous(engine) == 1  # NORMAL (FULL is 2)
    assert str(path) in instance_storage.held_files()
    # With a connection held, closing the writer leaves the WAL for a later checkpoint.
    assert (tmp_path / "runs.db-wal").exists()
    # Another process's view (a plain connection) sees the committed row.
    assert sqlite3.connect(path).execute("SELECT count(*) FROM events").fetchone() == (1,)


def test_held_connections_are_bounded_and_eviction_checkpoints(tmp_path, monkeypatch):
    monkeypatch.setattr(instance_storage, "MAX_HELD", 2)
    paths = [tmp_path / f"{n}.db" for n in range(3)]
    for path in paths:
        engine = create_engine(f"sqlite:///{path}", poolclass=NullPool)
        with engine.begin() as connection:
            connection.execute(text("PRAGMA journal_mode=WAL"))
            connection.execute(text("CREATE TABLE t (x INTEGER)"))
    held = instance_storage.held_files()
    assert str(paths[0]) not in held and {str(paths[1]), str(paths[2])} <= set(held)
    # The evicted database had its last connection closed: its WAL was checkpointed and removed.
    assert not (tmp_path / "0.db-wal").exists()
    assert sqlite3.connect(paths[0]).execute("SELECT count(*) FROM t").fetchone() == (0,)


def test_in_memory_databases_are_not_held():
    engine = create_engine("sqlite://", poolclass=NullPool)
    before = instance_storage.held_files()
    assert _synchronous(engine) == 1
    assert instance_storage.held_files() == before


@pytest.mark.parametrize("value", ["1", "true", "YES"])
def test_durable_setting_keeps_sqlite_defaults(monkeypatch, value):
    monkeypatch.setenv(instance_storage.DURABLE_ENV, value)
    monkeypatch.setattr(instance_storage, "_installed", False)
    assert instance_storage.install() is False
    assert instance_storage._installed is False


def test_alembic_scripts_are_read_once_and_every_new_database_is_still_stamped_at_head(tmp_path, monkeypatch):
    import shutil

    from dagster import DagsterInstance, asset, materialize

    reads: list[str] = []
    heads: set[str] = set()
    read = instance_storage._read_scripts

    def counted(cls, config):
        reads.append(config.get_main_option("script_location"))
        script = read(cls, config)
        heads.add(script.get_current_head())
        return script

    monkeypatch.setattr(instance_storage, "_scripts", {})
    monkeypatch.setattr(instance_storage, "_read_scripts", counted)

    @asset
    def one() -> int:
        return 1

    homes = [tmp_path / name for name in ("a", "b", "c")]
    for home in homes:  # run-sharded SQLite, as make run and make ui have it: each run is a new database
        home.mkdir()
        shutil.copy(Path(__file__).resolve().parent.parent / "config" / "dagster.yaml", home)
        with DagsterInstance.from_config(str(home)) as instance:
            assert materialize([one], instance=instance).success
    assert reads and len(reads) == len(set(reads)), reads  # each script folder read once, not per database
    stamped = [tmp_path / "a" / "history" / "runs.db", tmp_path / "c" / "schedules" / "schedules.db"]
    stamped += sorted((tmp_path / "b" / "history" / "runs").glob("*.db"))  # the run's own event shard
    for db in stamped:
        [(version,)] = sqlite3.connect(db).execute("SELECT version_num FROM alembic_version").fetchall()
        assert version in heads, (db, version, heads)
