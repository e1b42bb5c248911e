"""The standby endpoint server (mlops_dagster/serving/standby.py): started ahead of a deploy, adopted
as an environment's server. Every process a test starts is stopped by the fixture; polling loops
have deadlines only to bound a broken run, nothing asserts on timings."""

from __future__ import annotations

import json
import os
import socket
import stat
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from mlops_dagster.resources.object_store import LocalObjectStore
from mlops_dagster.resources.sagemaker import LocalSageMaker
from mlops_dagster.serving import idle_core, process, standby

DEADLINE = 90.0


@pytest.fixture
def endpoints(mlops_home: Path) -> Iterator[Path]:
    directory = process.endpoints_dir(mlops_home)
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    yield directory
    for env in ("dev", "staging"):
        process.stop_endpoint(mlops_home, env)
    for child in psutil.Process().children(recursive=True):
        if child.pid not in before:
            child.kill()


def _ready(directory: Path, pid: int) -> None:
    """Wait until the standby has imported what it preloads and listens for adoption."""
    deadline = time.monotonic() + DEADLINE
    while not (directory / standby.SOCKET).exists():
        assert psutil.pid_exists(pid), (directory / standby.LOG).read_text()
        assert time.monotonic() < deadline, "the standby never listened"
        time.sleep(0.05)


def _gone(pid: int) -> bool:
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        process._reap(pid)
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


def test_a_waiting_standby_becomes_the_environments_server(mlops_home, endpoints):
    pid = standby.start(endpoints)
    assert pid is not None
    assert standby.start(endpoints) is None  # one standby at a time
    _ready(endpoints, pid)
    assert stat.S_IMODE((endpoints / standby.SOCKET).stat().st_mode) == 0o600
    record = process.start_endpoint(mlops_home, "dev")
    assert record.pid == pid  # adopted: no new process
    assert process._ping(record.port) == 503  # up, no model yet
    assert process.is_alive(record)
    assert not (endpoints / standby.SOCKET).exists()
    assert f"endpoint dev (pid {pid}) serving" in Path(record.log).read_text()
    # The next server starts the usual way, and a new standby may start.
    other = process.start_endpoint(mlops_home, "staging")
    assert other.pid != pid and process.is_alive(other)
    assert process.stop_endpoint(mlops_home, "dev") and _gone(pid)


def test_a_server_started_while_the_standby_imports_waits_for_it(mlops_home, endpoints):
    """The standby waits for an idle core before importing; a server start hurries it and adopts it
    (its imports are what a new server would do), instead of starting a second process."""
    pid = standby.start(endpoints)
    assert not (endpoints / standby.SOCKET).exists()  # just started: still importing, or waiting to
    record = process.start_endpoint(mlops_home, "dev")
    assert record.pid == pid and process.is_alive(record)
    assert (endpoints / standby.HURRY).exists()  # told to import now
    assert process.stop_endpoint(mlops_home, "dev") and _gone(pid)


def test_without_a_standby_adoption_declines_and_a_server_is_launched(mlops_home, endpoints):
    endpoints.mkdir(parents=True)
    with socket.create_server(("127.0.0.1", 0)) as listening:
        assert standby.adopt(endpoints, listening, ["--name", "dev"]) is None
    record = process.start_endpoint(mlops_home, "dev")
    assert process.is_alive(record)


def test_a_request_without_a_socket_is_ignored_and_the_standby_keeps_waiting(mlops_home, endpoints):
    pid = standby.start(endpoints)
    _ready(endpoints, pid)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(10)
        conn.connect(str(endpoints / standby.SOCKET))
        conn.sendall(b"\x00\x00\x00\x02{}")  # no listening socket passed along
        assert conn.recv(64) == b""  # closed without an answer
    assert psutil.pid_exists(pid) and (endpoints / standby.SOCKET).exists()
    assert process.start_endpoint(mlops_home, "dev").pid == pid


def test_a_caller_that_gives_up_before_its_go_ahead_leaves_the_standby_waiting(mlops_home, endpoints):
    pid = standby.start(endpoints)
    _ready(endpoints, pid)
    message = json.dumps({"argv": ["--name", "dev"], "env": {}}).encode()
    with socket.create_server(("127.0.0.1", 0)) as listening, socket.socket(socket.AF_UNIX) as conn:
        conn.settimeout(10)
        conn.connect(str(endpoints / standby.SOCKET))
        socket.send_fds(conn, [struct.pack("!I", len(message)), message], [listening.fileno()])
        assert conn.recv(64) == f"adopted {pid}".encode()
    # Closed without the go-ahead (as a caller that timed out): the standby did not serve that socket.
    record = process.start_endpoint(mlops_home, "dev")
    assert record.pid == pid and process._ping(record.port) == 503


def test_a_standby_nobody_adopts_exits_after_its_idle_time(endpoints):
    pid = standby.start(endpoints, idle_seconds=0.5)
    assert standby.waiting(endpoints)
    assert _gone(pid)
    assert "not adopted within 0.5 s, exiting" in (endpoints / standby.LOG).read_text()
    assert not (endpoints / standby.SOCKET).exists()
    assert not standby.waiting(endpoints)


def test_prepare_hosting_starts_a_standby_unless_the_environment_is_serving(mlops_home, endpoints):
    resource = LocalSageMaker(
        home=str(mlops_home), region="us-east-1", bucket="mlops-local", store=LocalObjectStore(root=str(mlops_home))
    )
    message = resource.prepare_hosting("dev")
    assert message is not None and "standby endpoint server" in message
    pid = int(message.split("(pid ")[1].split(")")[0])
    assert resource.prepare_hosting("dev") is None  # one is already starting
    _ready(endpoints, pid)
    record = process.start_endpoint(mlops_home, "dev")
    assert record.pid == pid
    assert resource.prepare_hosting("dev") is None  # dev is serving: its deploys load into it
    assert not (endpoints / standby.SOCKET).exists()
    assert os.getpid() != pid


def test_idle_core_waits_for_a_free_core_or_the_interrupt(tmp_path: Path):
    busy, idle = tmp_path / "busy", tmp_path / "idle"
    busy.write_text("2.00 1.00 0.50 5/200 1234\n")  # 4 others running
    idle.write_text("0.10 0.10 0.10 1/200 1234\n")  # only the reader
    assert idle_core.others_running(str(busy)) == 4 and idle_core.others_running(str(idle)) == 0
    assert idle_core.others_running(str(tmp_path / "none")) is None
    assert idle_core.wait(max_seconds=5, cores=2, loadavg=str(idle), sustain_seconds=0.1) >= 0.1
    assert idle_core.wait(max_seconds=0.1, cores=2, loadavg=str(busy)) >= 0.1  # gives up, goes on
    calls = []
    assert idle_core.wait(max_seconds=30, cores=2, loadavg=str(busy), hurried=lambda: calls.append(1) or len(calls) > 2) < 30
    assert len(calls) == 3  # asked on every poll, and returned as soon as it said so


def test_idle_core_wants_the_core_idle_for_a_while(monkeypatch):
    """A moment's idle core (the pipeline's start, before its first job) is not enough."""
    readings = [0, 3] + [0] * 10_000  # idle, then busy, then idle for good
    seen = []
    monkeypatch.setattr(idle_core, "others_running", lambda loadavg: seen.append(1) or readings[len(seen) - 1])
    waited = idle_core.wait(max_seconds=30, cores=2, sustain_seconds=0.2)
    assert 0.2 <= waited < 30
    assert len(seen) >= 2 + int(0.2 / idle_core.POLL_SECONDS)  # counted from the reading after the busy one

