"""The standby endpoint server (mlops_dagster/serving/standby.py): started ahead of a deploy, adopted
as an environment's server. Every process a test starts is stopped by the fixture; polling loops
have deadlines only to bound a broken run, nothing asserts on timings."""

from __future__ import annotations

import json
import os
import socket
import stat
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from dagster import AssetKey, Definitions, asset, define_asset_job

from mlops_dagster.resources.object_store import LocalObjectStore
from mlops_dagster.resources.sagemaker import LOCAL_ACCOUNT_ID, LocalSageMaker
from mlops_dagster.serving import gateway, idle_core, process, standby

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
    """The standby imports at the lowest priority; a server start hurries it and adopts it (its
    imports are what a new server would do), instead of starting a second process."""
    pid = standby.start(endpoints)
    assert not (endpoints / standby.SOCKET).exists()  # just started: still importing, or waiting to
    record = process.start_endpoint(mlops_home, "dev")
    assert record.pid == pid and process.is_alive(record)
    assert (endpoints / standby.HURRY).exists()  # told to import now
    if idle_core.autogroup_nice() is not None:
        # The server it became runs at its session's normal priority, not the standby's, which the
        # server start's hurry gave back while the imports still ran.
        assert _autogroup_nice(pid) == 0
        said = (endpoints / standby.LOG).read_text()
        assert "at the lowest CPU priority (autogroup nice 19), hurried after" in said
    assert process.stop_endpoint(mlops_home, "dev") and _gone(pid)


def _autogroup_nice(pid: int) -> int:
    return int(Path(f"/proc/{pid}/autogroup").read_text().split()[-1])


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


def _resource(mlops_home: Path) -> LocalSageMaker:
    return LocalSageMaker(
        home=str(mlops_home), region="us-east-1", bucket="mlops-local", store=LocalObjectStore(root=str(mlops_home))
    )


def _gateway_up(mlops_home: Path) -> gateway.GatewayRecord:
    deadline = time.monotonic() + DEADLINE
    while (record := gateway.read_gateway(mlops_home)) is None or not gateway.is_alive(record):
        assert time.monotonic() < deadline, "the gateway never came up"
        time.sleep(0.05)
    return record


def test_prepare_hosting_starts_a_standby_unless_the_environment_is_serving(mlops_home, endpoints):
    resource = _resource(mlops_home)
    message = resource.prepare_hosting("dev")
    assert message is not None and "standby endpoint server" in message
    pid = int(message.split("(pid ")[1].split(")")[0])
    ahead = _gateway_up(mlops_home)  # the SageMaker Runtime gateway starts with it
    assert resource.prepare_hosting("dev") is None  # one is already starting
    _ready(endpoints, pid)
    assert gateway.needed(endpoints)  # no endpoint yet, but a deploy is coming: the gateway stays
    record = process.start_endpoint(mlops_home, "dev")
    assert record.pid == pid
    assert resource.prepare_hosting("dev") is None  # dev is serving: its deploys load into it
    assert not (endpoints / standby.SOCKET).exists()
    assert os.getpid() != pid
    assert gateway.ensure_gateway(mlops_home, "us-east-1", LOCAL_ACCOUNT_ID).pid == ahead.pid  # the deploy's


def test_a_gateway_started_ahead_imports_at_low_priority_and_serves_at_normal(mlops_home, endpoints):
    endpoints.mkdir(parents=True)
    hurry = endpoints / gateway.HURRY
    hurry.touch()
    an_hour_ago = time.time() - 3600
    os.utime(hurry, (an_hour_ago, an_hour_ago))  # a deploy's of long ago: not for this gateway
    ahead = gateway.ensure_gateway(mlops_home, "us-east-1", LOCAL_ACCOUNT_ID, ahead=True)
    said = Path(ahead.log).read_text()
    if idle_core.autogroup_nice() is not None:
        assert "started ahead of the deploy: imports done at the lowest CPU priority (autogroup nice 19)\n" in said
        assert _autogroup_nice(ahead.pid) == 0
    # The deploy's call touches the hurry file (for a gateway still importing) and gets this one.
    assert gateway.ensure_gateway(mlops_home, "us-east-1", LOCAL_ACCOUNT_ID).pid == ahead.pid
    assert hurry.stat().st_mtime > an_hour_ago
    assert gateway.stop_gateway(mlops_home)


@pytest.mark.skipif(idle_core.autogroup_nice() is None, reason="priorities do not apply here: nothing to hurry")
def test_a_deploy_that_touched_the_hurry_file_just_before_the_gateway_started_hurries_it(mlops_home, endpoints):
    endpoints.mkdir(parents=True)
    (endpoints / gateway.HURRY).touch()  # a deploy that then waited for the lock the ahead start held
    ahead = gateway.ensure_gateway(mlops_home, "us-east-1", LOCAL_ACCOUNT_ID, ahead=True)
    assert ", hurried after " in Path(ahead.log).read_text()
    assert gateway.stop_gateway(mlops_home)


def test_the_gateway_is_needed_while_an_endpoint_or_a_standby_is_there(endpoints):
    assert not endpoints.exists() and not gateway.needed(endpoints)  # no folder (or a wiped one)
    endpoints.mkdir(parents=True)
    (endpoints / gateway.RUNTIME_FILE).write_text("{}")
    assert not gateway.needed(endpoints)  # its own record does not count
    pid = standby.start(endpoints, idle_seconds=0.5)
    assert gateway.needed(endpoints)
    assert _gone(pid) and not gateway.needed(endpoints)  # not adopted: it went away
    (endpoints / "dev.json").write_text("{}")
    assert gateway.needed(endpoints)


def _run_selecting(mlops_home: Path, keys: list[str], job: bool = False) -> bool:
    """Run two stub assets, one named like the dev endpoint's, with the local sagemaker resource, as
    `dagster asset materialize --select` (a run with an asset selection) or as a job's run (none)."""

    @asset(name="dev_endpoint")
    def stub_endpoint(sagemaker: LocalSageMaker) -> int:
        return 1

    @asset
    def stub_other(sagemaker: LocalSageMaker) -> int:
        return 2

    defs = Definitions(
        assets=[stub_endpoint, stub_other],
        resources={"sagemaker": _resource(mlops_home)},
        jobs=[define_asset_job("everything", selection="*")],
    )
    if job:
        return defs.resolve_job_def("everything").execute_in_process().success
    selection = [AssetKey(key) for key in keys]
    return defs.resolve_implicit_global_asset_job_def().execute_in_process(asset_selection=selection).success


def test_a_run_that_will_deploy_prepares_hosting_when_it_starts(mlops_home, endpoints, monkeypatch):
    """Dagster sets the resource up at the run's start: hosting is prepared there, before any asset,
    for a run whose selection names an endpoint; a job's run names none (pipeline_execution does it)."""
    calls: list[str] = []
    monkeypatch.setattr(LocalSageMaker, "prepare_hosting", lambda self, env: calls.append(env) or "prepared")
    assert _run_selecting(mlops_home, ["stub_other"]) and calls == []
    assert _run_selecting(mlops_home, [], job=True) and calls == []
    assert _run_selecting(mlops_home, ["stub_other", "dev_endpoint"]) and calls == ["dev"]


def test_hosting_that_cannot_be_prepared_early_does_not_fail_the_run(mlops_home, endpoints, monkeypatch, caplog):
    def broken(self, env):
        raise process.EndpointError(f"{env}.json is not an endpoint record")

    monkeypatch.setattr(LocalSageMaker, "prepare_hosting", broken)
    assert _run_selecting(mlops_home, ["dev_endpoint"])
    assert "hosting for dev could not be prepared at the run's start: dev.json is not an endpoint record" in caplog.text


def test_prepare_hosting_starts_the_gateway_and_the_standby(mlops_home, endpoints):
    _resource(mlops_home).prepare_hosting("staging")
    assert standby.waiting(endpoints)
    _gateway_up(mlops_home)


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



def _autogroup_files(tmp_path: Path, enabled: str = "1", nice: int = 0, cgroup: str = "4:cpu,cpuacct:/\n") -> dict:
    """lowered()'s kernel files, faked: the autogroup switch, this session's autogroup, the cgroup."""
    switch, group, cgroups = tmp_path / "sched_autogroup_enabled", tmp_path / "autogroup", tmp_path / "cgroup"
    switch.write_text(f"{enabled}\n")
    group.write_text(f"/autogroup-7 nice {nice}\n")
    cgroups.write_text(cgroup)
    return {"path": str(group), "switch": str(switch), "cgroup": str(cgroups), "cgroup_root": str(tmp_path / "fs")}


def _nice(path: str) -> int:
    while not (text := Path(path).read_text()):  # a regular file: caught between truncate and write
        time.sleep(0.001)
    return int(text.split()[-1])


def test_lowered_runs_the_block_at_nice_19_and_restores_the_groups_own(tmp_path: Path):
    files = _autogroup_files(tmp_path, nice=3)
    with idle_core.lowered(own_session=True, **files) as how:
        assert _nice(files["path"]) == 19 and str(how) == "at the lowest CPU priority (autogroup nice 19)"
    assert _nice(files["path"]) == 3 and how.hurried_after is None
    with pytest.raises(RuntimeError, match="inside"), idle_core.lowered(own_session=True, **files):
        raise RuntimeError("inside")  # the block's error is the caller's; the priority comes back
    assert _nice(files["path"]) == 3


def test_lowered_gives_the_priority_back_as_soon_as_a_caller_hurries_it(tmp_path: Path):
    files = _autogroup_files(tmp_path)
    hurry = tmp_path / "hurry"
    with idle_core.lowered(hurried=hurry.exists, own_session=True, **files) as how:
        assert _nice(files["path"]) == 19
        hurry.touch()
        deadline = time.monotonic() + DEADLINE
        while _nice(files["path"]) != 0:  # still inside the block: the rest of the work runs at normal priority
            assert time.monotonic() < deadline
            time.sleep(0.01)
    assert _nice(files["path"]) == 0
    assert how.hurried_after is not None and ", hurried after " in str(how)


@pytest.mark.parametrize(
    "why, enabled, own_session, cgroup",
    [
        ("autogroups off", "0", True, "4:cpu,cpuacct:/\n"),
        ("not its own session: it would lower the terminal's", "1", False, "4:cpu,cpuacct:/\n"),
        ("in a container's CPU cgroup (v1)", "1", True, "4:cpu,cpuacct:/docker/0123\n"),
        ("in a unit's CPU cgroup (v2)", "1", True, "0::/user.slice/app.service\n"),
    ],
)
def test_where_a_nice_value_would_not_work_lowered_waits_for_an_idle_core(
    tmp_path: Path, monkeypatch, why, enabled, own_session, cgroup
):
    files = _autogroup_files(tmp_path, enabled=enabled, cgroup=cgroup)
    (tmp_path / "fs" / "user.slice").mkdir(parents=True)
    (tmp_path / "fs" / "user.slice" / "cpu.weight").write_text("100\n")  # the cpu controller is on there
    waits = []
    monkeypatch.setattr(idle_core, "wait", lambda hurried=None: waits.append(hurried) or 0.25)
    with idle_core.lowered(own_session=own_session, **files) as how:
        assert _nice(files["path"]) == 0, why
    assert str(how) == "after 0.25 s waiting for an idle core" and len(waits) == 1


def test_the_root_cpu_cgroup_is_recognised(tmp_path: Path):
    """Autogroups apply only to processes in the root CPU group (the kernel's task_wants_autogroup)."""
    fs = tmp_path / "fs"
    (fs / "user.slice" / "session-1.scope").mkdir(parents=True)
    cgroup = tmp_path / "cgroup"

    def root(text: str) -> bool:
        cgroup.write_text(text)
        return idle_core.in_root_cpu_cgroup(str(cgroup), str(fs))

    assert root("12:memory:/x\n4:cpu,cpuacct:/\n0::/x\n") and not root("4:cpu,cpuacct:/lxc/a\n")
    assert root("0::/user.slice/session-1.scope\n")  # v2 with the cpu controller off all the way up
    (fs / "user.slice" / "cpu.weight").write_text("100\n")
    assert not root("0::/user.slice/session-1.scope\n")  # on in a parent: that parent is the group
    (fs / "cpu.weight").write_text("100\n")
    assert not root("0::/\n")  # a container's namespaced root (the real root has no cpu.weight)
    assert not root("") and not idle_core.in_root_cpu_cgroup(str(tmp_path / "none"), str(fs))
    assert idle_core.autogroup_nice(str(tmp_path / "missing"), cgroup=str(cgroup), cgroup_root=str(fs)) is None


def test_the_kernels_rate_limit_is_waited_out(tmp_path: Path, monkeypatch):
    """Unprivileged, the kernel takes one autogroup nice change per 100 ms machine-wide (EAGAIN)."""
    group = _autogroup_files(tmp_path)["path"]
    refusals = [BlockingIOError(11, "try again")] * 2
    real_open = open

    def busy_open(path, mode="r", *args, **kwargs):
        if "w" in mode and refusals:
            raise refusals.pop()
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(idle_core, "open", busy_open, raising=False)
    assert idle_core.set_autogroup_nice(19, deadline_seconds=DEADLINE, path=group) and _nice(group) == 19
    refusals.extend([BlockingIOError(11, "try again")] * 2)
    assert not idle_core.set_autogroup_nice(0, deadline_seconds=0, path=group)  # gave up: still 19
    assert _nice(group) == 19
    assert not idle_core.set_autogroup_nice(0, deadline_seconds=DEADLINE, path=str(tmp_path / "no" / "such"))


def test_a_priority_that_cannot_be_restored_is_an_error(tmp_path: Path, monkeypatch):
    """A standby that could not get its priority back must not become a server at nice 19."""
    files = _autogroup_files(tmp_path)
    real_set = idle_core.set_autogroup_nice
    monkeypatch.setattr(
        idle_core, "set_autogroup_nice", lambda value, d, path: value == 19 and real_set(value, d, path)
    )
    with pytest.raises(OSError, match=r"could not set .*autogroup back to nice 0"):
        with idle_core.lowered(own_session=True, **files):
            pass


@pytest.mark.skipif(idle_core.autogroup_nice() is None, reason="the kernel does not group sessions (autogroup)")
def test_lowered_on_this_kernel(tmp_path: Path):
    """The real /proc/self/autogroup of a process in a session of its own, as the standby is."""
    script = (
        "from mlops_dagster.serving import idle_core\n"
        "with idle_core.lowered() as how:\n"
        "    print(idle_core.autogroup_nice(), how)\n"
        "print(idle_core.autogroup_nice())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, start_new_session=True, timeout=DEADLINE
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["19 at the lowest CPU priority (autogroup nice 19)", "0"]
