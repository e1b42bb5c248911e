"""One detached endpoint server per environment (dev, staging, prod), managed through files.

    $MLOPS_HOME/endpoints/<env>.json     the record: url, port, pid, pid_create_time, token,
                                         the live model (mode 0600: it holds the admin token)
    $MLOPS_HOME/endpoints/<env>.log      the server's log, rotated before it passes LOG_MAX_BYTES
                                         (10 MiB); one older part is kept as <env>.log.1
    $MLOPS_HOME/endpoints/<env>/models/  the model versions the server extracted

A server outlives the process that started it (its own session), so any later process finds
it from the record. It is the same process only if the pid exists with the recorded create
time (pids are reused) and /ping answers. A /ping that times out is tried again, with a longer
timeout, while the process exists (a busy server is not a dead one); a refused connection or a
gone process is final at once. Starting, stopping and record updates for one environment are
serialized by an flock on <env>.lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import http.client
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from . import standby

# A process's start time is boot time (wall clock) + ticks since boot: a wall-clock step or NTP
# correction moves it for every reader. A pid reused within a second by another process is not a real risk.
START_TIME_TOLERANCE = 1.0

HOST = "127.0.0.1"
START_DEADLINE_SECONDS = 60.0
STOP_GRACE_SECONDS = 10.0
DEPLOY_TIMEOUT_SECONDS = 300.0
# Timeouts of the /ping attempts of is_alive, and the pause before each retry (times the attempt).
PING_TIMEOUTS_SECONDS = (2.0, 5.0, 10.0)
PING_BACKOFF_SECONDS = 0.25
LOG_MAX_BYTES = 10 * 1024 * 1024  # <env>.log and <env>.log.1: at most about 20 MiB per environment
ENV_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")

# Runs the app module without importing mlops_dagster/__init__.py, which builds the whole Dagster
# code location (seconds per start) that the server does not use, nor mlops_dagster/monitoring's
# (the drift statistics, scipy): the server needs monitoring.capture only. argv: <package dir> <app args>.
_BOOTSTRAP = (
    "import sys, types\n"
    "package = types.ModuleType('mlops_dagster')\n"
    "package.__path__ = [sys.argv.pop(1)]\n"
    "sys.modules['mlops_dagster'] = package\n"
    "monitoring = types.ModuleType('mlops_dagster.monitoring')\n"
    "monitoring.__path__ = [package.__path__[0] + '/monitoring']\n"
    "sys.modules['mlops_dagster.monitoring'] = monitoring\n"
    "from mlops_dagster.serving.{module} import {function} as main\n"
    "main(sys.argv[1:])\n"
)
_PACKAGE_DIR = Path(__file__).resolve().parents[1]


def bootstrap(module: str, function: str) -> list[str]:
    """The command that runs ``mlops_dagster.serving.<module>.<function>(args)``, args to append
    (-P: the working directory is not put on sys.path, where nothing may shadow a module)."""
    return [sys.executable, "-P", "-c", _BOOTSTRAP.format(module=module, function=function), str(_PACKAGE_DIR)]


def remember_child(proc: subprocess.Popen) -> None:
    """A process started here, polled so that it does not linger as a zombie once it exits."""
    _children[proc.pid] = proc

# Popen handles of servers started here, polled so that dead ones do not linger as zombies.
_children: dict[int, subprocess.Popen] = {}


class EndpointError(RuntimeError):
    """An endpoint could not be started, reached or stopped; the message says which and why."""


class DeployRefused(EndpointError):
    """The server refused a model (409); the old model is still serving. ``reason`` is the server's."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class EndpointRecord:
    env: str
    url: str
    port: int
    pid: int
    pid_create_time: float
    token: str = field(repr=False)
    model_package_arn: str | None = None
    sha256: str | None = None
    model_data: str | None = None
    started_at: str | None = None
    log: str | None = None
    home: str | None = None  # $MLOPS_HOME: where deploy() updates this record
    deployed_at: str | None = None  # when the live model was loaded (ISO 8601, UTC)
    capture_destination: str | None = None  # {DestinationS3Uri}/{endpoint}/{variant}/ while capturing

    def public_dict(self) -> dict[str, Any]:
        """Everything but the admin token (for logs and Dagster metadata)."""
        return {k: v for k, v in asdict(self).items() if k != "token"}


_RECORD_FIELDS = {f.name for f in fields(EndpointRecord)}


@dataclass(frozen=True)
class EnsureResult:
    record: EndpointRecord
    started: bool  # a new server process was started
    replaced: EndpointRecord | None  # the record of a server found dead (or hung) and replaced
    message: str


@dataclass(frozen=True)
class InvokeResult:
    status: int
    content_type: str
    body: bytes


# --- paths and records -----------------------------------------------------------------------


def endpoints_dir(home: Path) -> Path:
    return Path(home).resolve() / "endpoints"  # absolute: the server and later callers may run elsewhere


def check_env(env: str) -> str:
    """Environment names become file names: lowercase letters, digits, - and _ only."""
    if not isinstance(env, str) or not ENV_NAME.fullmatch(env):
        raise ValueError(f"endpoint environment {env!r} must match {ENV_NAME.pattern} (e.g. dev, staging, prod)")
    return env


def record_path(home: Path, env: str) -> Path:
    return endpoints_dir(home) / f"{check_env(env)}.json"


def read_endpoint(home: Path, env: str) -> EndpointRecord | None:
    """The recorded endpoint of ``env``, alive or not; None if there is no record."""
    path = record_path(home, env)
    try:
        data = json.loads(path.read_text())
        return EndpointRecord(**{k: v for k, v in data.items() if k in _RECORD_FIELDS})
    except FileNotFoundError:
        return None
    except (ValueError, TypeError) as exc:
        raise EndpointError(f"{path} is not an endpoint record ({exc}); stop_endpoint removes it") from exc


def _write_record(home: Path, record: EndpointRecord) -> None:
    """Temp file + rename: a reader sees the old record or the new one, never half of one."""
    path = record_path(home, record.env)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # mode 0600
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(asdict(record), f, indent=2)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def _locked(home: Path, env: str) -> Iterator[None]:
    directory = endpoints_dir(home)
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / f"{check_env(env)}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


# --- liveness --------------------------------------------------------------------------------


def _reap(pid: int) -> None:
    """A server started here that has exited is waited for, so that it is not left a zombie."""
    proc = _children.get(pid)
    if proc is not None and proc.poll() is not None:
        del _children[pid]


def _same_process(pid: int, created: float) -> bool:
    """True if ``pid`` is still the process that was started (not gone, a zombie, or reused)."""
    _reap(pid)
    try:
        process = psutil.Process(pid)
        return process.status() != psutil.STATUS_ZOMBIE and abs(process.create_time() - created) < START_TIME_TOLERANCE
    except psutil.Error:
        return False


def _probe(port: int, timeout: float) -> int | None:
    """The status of GET /ping (200 serving, 503 up without a model); None if the connection is
    refused or broken. Raises TimeoutError if the server does not answer within ``timeout``."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("GET", "/ping")
        response = conn.getresponse()
        response.read()
        return response.status
    except TimeoutError:
        raise
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def _ping(port: int, timeout: float = PING_TIMEOUTS_SECONDS[0]) -> int | None:
    """The status of GET /ping, None if nothing answers in time (one attempt)."""
    try:
        return _probe(port, timeout)
    except TimeoutError:
        return None


def is_alive(record: EndpointRecord) -> bool:
    """The recorded process still runs (same pid and create time) and answers /ping.

    One slow answer is not death: a /ping that times out is tried again (PING_TIMEOUTS_SECONDS,
    each longer) as long as the process exists. A gone process, or a refused connection, is dead
    at once."""
    for attempt, timeout in enumerate(PING_TIMEOUTS_SECONDS):
        if attempt:
            time.sleep(PING_BACKOFF_SECONDS * attempt)
        if not _same_process(record.pid, record.pid_create_time):
            return False
        try:
            return _probe(record.port, timeout) in (200, 503)
        except TimeoutError:
            continue
    return False


# --- start -----------------------------------------------------------------------------------


def start_endpoint(home: Path, env: str, port: int | None = None) -> EndpointRecord:
    """Start the server of ``env`` on 127.0.0.1 (``port``, or a free one); it has no model yet."""
    with _locked(home, env):
        existing = read_endpoint(home, env)
        if existing is not None and is_alive(existing):
            raise EndpointError(
                f"endpoint {env} is already running at {existing.url} (pid {existing.pid}); "
                "stop_endpoint first, or use ensure_endpoint"
            )
        if existing is not None:
            _terminate(existing)  # present but not answering: do not leave it behind
        return _start(home, env, [port or 0])


def _start(home: Path, env: str, ports: Sequence[int]) -> EndpointRecord:
    directory = endpoints_dir(home)
    token = secrets.token_urlsafe(32)
    token_file = directory / f"{env}.token"
    log_file = directory / f"{env}.log"
    sock = _bind(ports, env)
    port = sock.getsockname()[1]
    proc = None
    try:
        _write_private(token_file, token)
        proc = _launch(sock, token_file, directory / env / "models", log_file, env, directory)
        sock.close()  # the server has its own copy
        _wait_until_up(proc, port, env, log_file)
        created = psutil.Process(proc.pid).create_time()
    except BaseException:
        if proc is not None:
            _kill(proc)
        raise
    finally:
        sock.close()
        token_file.unlink(missing_ok=True)  # read by the server at start-up; the record keeps the copy
    record = EndpointRecord(
        env=env,
        url=f"http://{HOST}:{port}",
        port=port,
        pid=proc.pid,
        pid_create_time=created,
        token=token,
        started_at=datetime.now(UTC).isoformat(timespec="seconds"),
        log=str(log_file),
        home=str(Path(home).resolve()),
    )
    _write_record(home, record)
    return record


def _write_private(path: Path, text: str) -> None:
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def _bind(ports: Sequence[int], env: str) -> socket.socket:
    """A listening socket on 127.0.0.1, bound here so that the port is known before the start."""
    errors = []
    for port in ports:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((HOST, port))
            sock.listen(128)
            return sock
        except OSError as exc:
            sock.close()
            errors.append(f"port {port}: {exc.strerror or exc}")
    raise EndpointError(f"endpoint {env}: cannot listen on {HOST} ({'; '.join(errors)})")


def _launch(
    sock: socket.socket, token_file: Path, model_root: Path, log_file: Path, env: str, directory: Path
) -> subprocess.Popen | _Adopted:
    """The server of ``env`` on ``sock``: the standby server if one is waiting, else a new process."""
    args = ["--token-file", str(token_file), "--model-root", str(model_root), "--name", env]
    args += ["--log-file", str(log_file), "--log-max-bytes", str(LOG_MAX_BYTES)]
    pid = standby.adopt(directory, sock, args)
    if pid is not None:
        return _Adopted(pid)
    fd = sock.fileno()
    args += ["--fd", str(fd)]
    with open(log_file, "ab") as out:  # until the server takes its log over (and if it fails before)
        proc = subprocess.Popen(
            [*bootstrap("app", "main"), *args],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            pass_fds=(fd,),
            start_new_session=True,  # outlives the caller; a Ctrl-C in its terminal does not reach it
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    remember_child(proc)
    return proc


class _Adopted:
    """A standby server (standby.py) that became this environment's: the parts of a Popen that
    starting a server uses, for a process another process started."""

    def __init__(self, pid: int):
        self.pid, self.returncode = pid, None
        self._process = psutil.Process(pid)

    def poll(self) -> int | None:
        _reap(self.pid)  # the standby is our child when this process started it
        try:
            if self._process.status() != psutil.STATUS_ZOMBIE:
                return None
        except psutil.NoSuchProcess:
            pass
        self.returncode = -1 if self.returncode is None else self.returncode  # not ours to collect
        return self.returncode

    def kill(self) -> None:
        with contextlib.suppress(psutil.NoSuchProcess):
            self._process.kill()

    def wait(self, timeout: float) -> None:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.TimeoutExpired):
            self._process.wait(timeout)


def _wait_until_up(proc: subprocess.Popen | _Adopted, port: int, env: str, log_file: Path) -> None:
    deadline = time.monotonic() + START_DEADLINE_SECONDS
    while _ping(port) is None:
        if proc.poll() is not None:
            raise EndpointError(
                f"endpoint {env} exited with code {proc.returncode} before answering /ping; "
                f"the end of {log_file}:\n{_tail(log_file)}"
            )
        if time.monotonic() > deadline:
            raise EndpointError(
                f"endpoint {env} did not answer /ping within {START_DEADLINE_SECONDS:.0f} s; see {log_file}"
            )
        time.sleep(0.05)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"(unreadable: {exc})"


def _kill(proc: subprocess.Popen | _Adopted) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)
    _children.pop(proc.pid, None)


# --- stop and ensure -------------------------------------------------------------------------


def stop_endpoint(home: Path, env: str) -> bool:
    """Stop the server of ``env`` (SIGTERM, SIGKILL after a grace) and remove its record and model
    versions (the log stays). True if a running server was stopped, False if none was running."""
    with _locked(home, env):
        try:
            record = read_endpoint(home, env)
        except EndpointError:
            record = None  # unreadable: nothing to signal, but the file goes
        stopped = record is not None and _terminate(record)
        record_path(home, env).unlink(missing_ok=True)
        (endpoints_dir(home) / f"{env}.token").unlink(missing_ok=True)
        shutil.rmtree(endpoints_dir(home) / env, ignore_errors=True)
    from . import gateway  # here: gateway imports this module

    gateway.stop_if_idle(home)  # the SageMaker Runtime gateway stops with the last endpoint server
    return stopped


def _terminate(record: EndpointRecord, grace: float = STOP_GRACE_SECONDS) -> bool:
    if not _same_process(record.pid, record.pid_create_time):
        return False
    try:
        process = psutil.Process(record.pid)
        process.terminate()  # uvicorn finishes the requests in flight
        try:
            process.wait(grace)
        except psutil.TimeoutExpired:
            process.kill()
            process.wait(10)
    except psutil.NoSuchProcess:
        pass
    _reap(record.pid)
    return True


def ensure_endpoint(home: Path, env: str) -> EnsureResult:
    """The running server of ``env``, or a new one (same port if free) if it is missing or dead.

    A replaced server's model is not redeployed: ``replaced`` holds what it served."""
    with _locked(home, env):
        previous = read_endpoint(home, env)
        if previous is not None and is_alive(previous):
            return EnsureResult(
                previous, False, None, f"endpoint {env} is running at {previous.url} (pid {previous.pid})"
            )
        if previous is not None:
            _terminate(previous)
        record = _start(home, env, [previous.port, 0] if previous else [0])
        message = f"started endpoint {env} at {record.url} (pid {record.pid}); no model is loaded yet"
        if previous is not None:
            message = (
                f"endpoint {env} (pid {previous.pid}, {previous.url}) was not running any more; "
                f"{message} (it served {previous.model_package_arn or 'no model'})"
            )
        return EnsureResult(record, True, previous, message)


# --- calls -----------------------------------------------------------------------------------


def _request(
    record: EndpointRecord,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 60.0,
) -> tuple[int, str, bytes]:
    conn = http.client.HTTPConnection(HOST, record.port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.getheader("Content-Type", ""), response.read()
    except (OSError, http.client.HTTPException) as exc:
        raise EndpointError(f"endpoint {record.env} at {record.url}: {method} {path} failed: {exc}") from exc
    finally:
        conn.close()


def _admin(record: EndpointRecord, method: str, path: str, payload: Any = None, timeout: float = 60.0) -> dict:
    headers = {"X-Admin-Token": record.token, "Content-Type": "application/json"}
    body = None if payload is None else json.dumps(payload, default=_plain).encode()
    status, _, data = _request(record, method, path, body, headers, timeout)
    try:
        answer = json.loads(data)
    except ValueError:
        answer = {"error": data.decode(errors="replace")[:500]}
    if status == 409 and path == "/admin/deploy":
        reason = answer.get("error", "")
        raise DeployRefused(f"endpoint {record.env} refused the model: {reason}", reason)
    if status != 200:
        raise EndpointError(f"endpoint {record.env}: {method} {path} answered {status}: {answer.get('error', answer)}")
    return answer


def _plain(value: Any) -> Any:
    """numpy arrays and scalars in smoke rows become JSON lists and numbers."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def deploy(
    record: EndpointRecord,
    model_data: Path,
    sha256: str,
    model_package_arn: str | None,
    smoke_rows: Any,
    timeout: float = DEPLOY_TIMEOUT_SECONDS,
    capture: dict | None = None,
) -> dict:
    """Make the server load ``model_data`` (checked against ``sha256``) and switch to it once its
    smoke rows (lists of feature values, records, a numpy array or a DataFrame) predict. Returns the
    server's answer ({"changed", "live", "capture", ...}) and records the live model in <env>.json.
    ``capture``: {"settings": CaptureSettings.to_dict(), "store_root": <local object store root>} to
    capture requests, None not to (the same model with other capture settings changes only those).
    Raises DeployRefused (the old model still serves) with the server's reason."""
    if hasattr(smoke_rows, "columns"):  # a DataFrame iterates over its column names: send records
        smoke_rows = smoke_rows.to_dict(orient="records")
    request = {
        "model_data": str(Path(model_data).resolve()),
        "sha256": sha256,
        "model_package_arn": model_package_arn,
        "smoke_rows": list(smoke_rows),
        "capture": capture,
    }
    answer = _admin(record, "POST", "/admin/deploy", request, timeout)
    _record_live_model(record, answer["live"], answer.get("capture"))
    return answer


def _record_live_model(record: EndpointRecord, live: dict, capture: dict | None = None) -> None:
    if record.home is None:
        return
    home = Path(record.home)
    with _locked(home, record.env):
        current = read_endpoint(home, record.env)
        if current is None or current.pid != record.pid:  # restarted meanwhile: not this server's record
            return
        _write_record(
            home,
            replace(
                current,
                model_package_arn=live["model_package_arn"],
                sha256=live["sha256"],
                model_data=live["model_data"],
                deployed_at=live.get("loaded_at"),
                capture_destination=(capture or {}).get("destination") if (capture or {}).get("enabled") else None,
            ),
        )


def endpoint_status(record: EndpointRecord) -> dict:
    """GET /admin/status: the live model (or None), request and capture counts, the server's pid."""
    return _admin(record, "GET", "/admin/status")


def capture_status(record: EndpointRecord) -> dict | None:
    """The server's data capture counts (captured, sampled_out, dropped, written, files,
    failed_writes, failed_records, ...) from /ping; None before any deploy configured capture."""
    status, _, data = _request(record, "GET", "/ping")
    if status != 200:
        raise EndpointError(f"endpoint {record.env}: GET /ping answered {status}: {data[:300]!r}")
    return json.loads(data).get("capture")


def flush_capture(record: EndpointRecord, timeout: float = 30.0) -> dict | None:
    """Make the server write every request it captured so far; returns its capture counts."""
    return _admin(record, "POST", "/admin/flush-capture", timeout=timeout)["capture"]


def invoke(
    record: EndpointRecord,
    body: bytes,
    content_type: str,
    accept: str | None = None,
    timeout: float = 60.0,
    inference_id: str | None = None,
) -> InvokeResult:
    """POST /invocations, as InvokeEndpoint would; any HTTP status is returned, not raised.
    ``inference_id`` is sent as X-Amzn-SageMaker-Inference-Id (data capture's inferenceId)."""
    headers = {"Content-Type": content_type}
    if accept is not None:
        headers["Accept"] = accept
    if inference_id is not None:
        headers["X-Amzn-SageMaker-Inference-Id"] = inference_id
    status, returned_type, data = _request(record, "POST", "/invocations", body, headers, timeout)
    return InvokeResult(status, returned_type, data)
