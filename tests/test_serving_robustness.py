"""Endpoint robustness (issue 9, item 9): JSON nested too deeply is the client's mistake (400, and the
server keeps serving), the server's log stays under its size bound however many bad requests it
gets, and one slow /ping does not make a live server dead while a killed one still is."""

from __future__ import annotations

import hashlib
import http.server
import json
import logging
import os
import signal
import socket
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import joblib
import psutil
import pytest
from sklearn.linear_model import LinearRegression

from mlops_dagster.datasets import BOSTON_FEATURES, BOSTON_TARGET, synthetic_boston
from mlops_dagster.serving import process
from mlops_dagster.serving.app import BoundedFormatter, load_handlers
from mlops_dagster.serving.process import EndpointRecord

inference = load_handlers()  # training/inference.py, as the endpoint loads it
ROWS = synthetic_boston(5, seed=7)[BOSTON_FEATURES]
TOO_DEEP = "the JSON body is nested too deeply to parse"
DEPTH = 100_000


def nested(depth: int, inner: str = "") -> str:
    return "[" * depth + inner + "]" * depth


DEEP_BODIES = {
    "array": nested(DEPTH),
    "instances": '{"instances": ' + nested(DEPTH) + "}",
    "objects": '{"instances": [' + '{"a": ' * DEPTH + "1" + "}" * DEPTH + "]}",
}


@pytest.mark.parametrize("kind", sorted(DEEP_BODIES))
def test_input_fn_calls_deep_json_invalid_input(kind: str):
    with pytest.raises(inference.InvalidInput, match=TOO_DEEP):
        inference.input_fn(DEEP_BODIES[kind].encode(), "application/json", BOSTON_FEATURES)


def test_a_value_nested_below_the_recursion_limit_is_named_briefly():
    row = [1.0] * (len(BOSTON_FEATURES) - 1) + [json.loads(nested(500))]
    with pytest.raises(inference.InvalidInput) as caught:
        inference.input_fn(json.dumps([row]), "application/json", BOSTON_FEATURES)
    assert str(caught.value).startswith(f"row 1, {BOSTON_FEATURES[-1]}: expected a number, got [[[[")
    assert len(str(caught.value)) < 120  # the value is shown cut, not 1,000 brackets


# --- a real server ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> tuple[Path, str]:
    """A small model.tar.gz (model.joblib and features.json at the root) and its sha256."""
    root = tmp_path_factory.mktemp("model")
    frame = synthetic_boston(60, seed=5)
    joblib.dump(LinearRegression().fit(frame[BOSTON_FEATURES], frame[BOSTON_TARGET]), root / "model.joblib")
    (root / "features.json").write_text(json.dumps(BOSTON_FEATURES))
    archive = root / "model.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name in ("model.joblib", "features.json"):
            tar.add(root / name, arcname=name)
    return archive, hashlib.sha256(archive.read_bytes()).hexdigest()


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Path]:
    """A home for the test's own server; whatever the test starts is stopped."""
    before = set(process._children)
    try:
        yield tmp_path
    finally:
        process.stop_endpoint(tmp_path, "dev")
        for pid, proc in list(process._children.items()):
            if pid not in before and proc.poll() is None:
                proc.kill()
                proc.wait(10)


def serving(home: Path, artifact: tuple[Path, str]) -> EndpointRecord:
    record = process.start_endpoint(home, "dev")
    process.deploy(record, artifact[0], artifact[1], "arn:model-package/robust/1", ROWS.head(2).to_numpy())
    return record


def csv_rows() -> bytes:
    return "".join(",".join(repr(float(v)) for v in row) + "\n" for row in ROWS.itertuples(index=False)).encode()


def assert_serving(record: EndpointRecord) -> None:
    answer = process.invoke(record, csv_rows(), "text/csv", "application/json")
    assert answer.status == 200, answer.body
    assert len(json.loads(answer.body)["predictions"]) == len(ROWS)
    assert process.is_alive(record)


def test_deeply_nested_json_is_400_and_the_server_keeps_serving(home: Path, artifact):
    record = serving(home, artifact)
    for kind, body in DEEP_BODIES.items():
        answer = process.invoke(record, body.encode(), "application/json")
        assert answer.status == 400, (kind, answer.body[:300])
        assert json.loads(answer.body)["error"].startswith(TOO_DEEP)
        assert_serving(record)
    log = Path(record.log).read_text()
    assert "Traceback" not in log and "the model failed" not in log  # the client's mistake: one line each
    assert log.count(f"/invocations answered 400: {TOO_DEEP}") == len(DEEP_BODIES)


def test_the_log_stays_under_its_bound_whatever_the_server_is_sent(home: Path, artifact, monkeypatch):
    bound = 8192
    monkeypatch.setattr(process, "LOG_MAX_BYTES", bound, raising=False)
    record = serving(home, artifact)
    bad = [
        (nested(10_000).encode(), "application/json"),
        (b"1,2,3\n", "text/csv"),
        (json.dumps({"instances": [["x" * 5000] * len(BOSTON_FEATURES)]}).encode(), "application/json"),
        (b"x", "application/xml"),
    ]
    statuses = {process.invoke(record, body, content_type).status for _ in range(40) for body, content_type in bad}
    log = Path(record.log)
    older = log.with_name(log.name + ".1")
    assert log.stat().st_size <= bound, f"{log} is {log.stat().st_size} bytes, above the bound of {bound}"
    assert statuses == {400, 415}
    assert_serving(record)
    assert older.exists() and older.stat().st_size <= bound  # rotated, and one older part kept
    assert not log.with_name(log.name + ".2").exists()
    assert "/invocations answered 4" in log.read_text() + older.read_text()


def test_a_long_log_record_is_cut_and_says_so():
    formatter = BoundedFormatter(limit=200)
    record = logging.LogRecord("mlops_dagster.serving", logging.ERROR, __file__, 1, "x" * 5000, None, None)
    text = formatter.format(record)
    assert len(text) < 260 and text.endswith(f"... ({len(formatter.formatMessage(record)) - 200} characters cut)")


# --- liveness --------------------------------------------------------------------------------------


class SlowOncePing(http.server.BaseHTTPRequestHandler):
    """/ping: the first request is held, unanswered, until a second one arrives, which answers at once."""

    pings: list[int]
    second: threading.Event

    def do_GET(self) -> None:  # noqa: N802 (the http.server naming)
        self.pings.append(len(self.pings) + 1)
        if len(self.pings) == 1:
            self.second.wait(60)  # the client gives up on this one and asks again
            return  # nobody waits for this answer any more
        self.second.set()
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def slow_once_server() -> Iterator[tuple[int, list[int]]]:
    handler = type("Handler", (SlowOncePing,), {"pings": [], "second": threading.Event()})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], handler.pings
    finally:
        handler.second.set()
        server.shutdown()
        server.server_close()
        thread.join(10)


def own_record(port: int) -> EndpointRecord:
    """A record whose "server process" is this test process (it exists) listening on ``port``."""
    me = psutil.Process()
    return EndpointRecord(
        env="dev", url=f"http://127.0.0.1:{port}", port=port, pid=me.pid, pid_create_time=me.create_time(), token="t"
    )


def test_one_slow_ping_does_not_make_a_live_server_dead(slow_once_server, monkeypatch):
    port, pings = slow_once_server
    # A short first timeout keeps the test quick; the first answer never comes before the retry anyway.
    monkeypatch.setattr(process, "PING_TIMEOUTS_SECONDS", (0.5, 30.0, 30.0), raising=False)
    monkeypatch.setattr(process, "PING_BACKOFF_SECONDS", 0.01, raising=False)
    assert process.is_alive(own_record(port))
    assert pings == [1, 2]


@pytest.fixture
def probes(monkeypatch) -> list[int]:
    """Counts the /ping attempts of is_alive."""
    calls: list[int] = []
    probe = process._probe

    def counted(port: int, timeout: float) -> int | None:
        calls.append(port)
        return probe(port, timeout)

    monkeypatch.setattr(process, "_probe", counted)
    return calls


def test_a_refused_connection_is_dead_at_the_first_attempt(probes):
    with socket.socket() as sock:  # a port nothing listens on any more
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert not process.is_alive(own_record(port))
    assert probes == [port]  # no retry: a refused connection is not a slow server


def test_a_killed_server_is_dead_without_a_ping(home: Path, artifact, probes):
    record = serving(home, artifact)
    probes.clear()  # the start waited for the first /ping
    assert process.is_alive(record) and probes == [record.port]
    os.kill(record.pid, signal.SIGKILL)
    process._children[record.pid].wait(10)
    assert not process.is_alive(record)
    assert probes == [record.port]  # the process is gone: no /ping was even tried


def test_a_small_wall_clock_correction_does_not_make_a_live_server_another_process():
    """psutil's start time is boot time (wall clock) + ticks: an NTP correction between the record and
    the check moves it a little; that is still the same process, a different start is not."""
    import psutil

    from mlops_dagster.serving import process

    started = psutil.Process().create_time()
    assert process._same_process(os.getpid(), started + 0.3)
    assert not process._same_process(os.getpid(), started + 5.0)
