"""The SageMaker Runtime API of the local endpoints: one address for boto3 and the SageMaker SDK.

    POST /endpoints/{EndpointName}/invocations   InvokeEndpoint, as runtime.sagemaker.<region>.amazonaws.com
    GET  /ping                                   200 while the gateway runs (not part of the AWS API)

``boto3.client("sagemaker-runtime", endpoint_url=url)`` and the SDK's ``Predictor`` (with
``AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME=url``, or a ``sagemaker.Session(sagemaker_runtime_client=...)``)
work unchanged against it. Each request is handed to ``LocalSageMakerRuntime.invoke_endpoint`` (the
local service's own runtime client), so routing and errors are defined once:

- request headers as botocore sends them: Content-Type, Accept, X-Amzn-SageMaker-Custom-Attributes,
  X-Amzn-SageMaker-Inference-Id, X-Amzn-SageMaker-Target-Variant (and the other modeled ones,
  which the runtime refuses by name);
- response headers Content-Type, x-Amzn-Invoked-Production-Variant, x-amzn-RequestId, and
  X-Amzn-SageMaker-Custom-Attributes when the runtime returns CustomAttributes. The local runtime
  takes the request's CustomAttributes but does not pass them to the model server: training/
  inference.py's handlers have no argument for them (nor in the scikit-learn container), so no
  answer carries any, as from that container on AWS;
- an error is the runtime's rest-json error: the code in ``x-amzn-ErrorType``, the message in the
  JSON body's ``message``, modeled fields (ModelError's OriginalStatusCode, OriginalMessage,
  LogStreamArn) beside it, the status it names (ValidationError 400, ModelError 424). A body over
  6 MB is 413 without an error type, which botocore reports as code "413"; a failure of the
  gateway itself is InternalFailure (500), its traceback in the log.

SigV4 signatures are not checked (any credentials, any region in the signature, are accepted): the
gateway listens on 127.0.0.1 only, like the endpoint servers it routes to.

While any local endpoint is up, ``$MLOPS_HOME/endpoints/runtime.json`` holds
``{"url": "http://127.0.0.1:<port>", ...}`` (written by temp file and rename; removed when the
gateway stops). The hosting backend starts the gateway when an endpoint goes InService (again if
it died), and when it reads an InService endpoint with a live server while no runtime.json exists
(an endpoint deployed before the gateway existed); a run that will deploy starts it ahead, with the
standby server (``LocalSageMaker.prepare_hosting``); ``process.stop_endpoint`` stops it with the
last endpoint server. Its log is ``endpoints/runtime.log`` (warnings and failures only).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from . import idle_core, process, standby

RUNTIME_FILE = "runtime.json"  # endpoints/runtime.json: the interface other tools read
HURRY = "runtime.hurry"  # touched by a caller that needs the gateway now (see _locked)
# A gateway started ahead counts a touch of HURRY from this long before its start was decided: a
# deploy may touch it just before the starter takes the lock (an older touch is a finished deploy's).
HURRY_MARGIN_SECONDS = 2.0
RESERVED_ENV = "runtime"  # an endpoint environment of this name would overwrite runtime.json
WATCH_SECONDS = 5.0  # how often the gateway checks that it is still needed (see _watch)
MAX_BODY_BYTES = 6 * 1024 * 1024  # read past this only to drain the request; the runtime answers 413
# Request headers -> InvokeEndpoint parameters (botocore's sagemaker-runtime model, lower-cased).
HEADER_PARAMS = {
    "content-type": "ContentType",
    "accept": "Accept",
    "x-amzn-sagemaker-custom-attributes": "CustomAttributes",
    "x-amzn-sagemaker-target-model": "TargetModel",
    "x-amzn-sagemaker-target-variant": "TargetVariant",
    "x-amzn-sagemaker-target-container-hostname": "TargetContainerHostname",
    "x-amzn-sagemaker-inference-id": "InferenceId",
    "x-amzn-sagemaker-enable-explanations": "EnableExplanations",
    "x-amzn-sagemaker-inference-component": "InferenceComponentName",
    "x-amzn-sagemaker-session-id": "SessionId",
}

# Runs this module without importing mlops_dagster/__init__.py (the whole Dagster code location),
# the monitoring package (scipy) or the local service (the SDK): the gateway needs the runtime only.
_BOOTSTRAP = (
    "import sys, types\n"
    "root = sys.argv.pop(1)\n"
    "for name, sub in (('mlops_dagster', ''), ('mlops_dagster.monitoring', '/monitoring'),\n"
    "                  ('mlops_dagster.sagemaker.local', '/sagemaker/local')):\n"
    "    module = types.ModuleType(name)\n"
    "    module.__path__ = [root + sub]\n"
    "    sys.modules[name] = module\n"
    "from mlops_dagster.serving.gateway import main\n"
    "main(sys.argv[1:])\n"
)

log = logging.getLogger("mlops_dagster.serving.gateway")


@dataclass(frozen=True)
class GatewayRecord:
    url: str
    port: int
    pid: int
    pid_create_time: float
    region: str
    account_id: str
    home: str
    log: str
    started_at: str
    api: str = "sagemaker-runtime"  # InvokeEndpoint at {url}/endpoints/<EndpointName>/invocations
    signatures: str = "not checked"


_FIELDS = {f.name for f in fields(GatewayRecord)}


# --- the app ---------------------------------------------------------------------------------


def create_app(home: Path, region: str, account_id: str):
    """The Starlette app answering InvokeEndpoint for the endpoints of the local service in ``home``."""
    from botocore.exceptions import ClientError, ParamValidationError
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    from mlops_dagster.sagemaker.local.runtime import LocalSageMakerRuntime, runtime_error

    runtime = LocalSageMakerRuntime(home, region=region, account_id=account_id)

    def error_response(err: ClientError, request_id: str) -> Response:
        response = err.response
        code, status = response["Error"]["Code"], response["ResponseMetadata"]["HTTPStatusCode"]
        body = {"message": response["Error"]["Message"]}
        body.update({k: v for k, v in response.items() if k not in ("Error", "ResponseMetadata")})
        headers = {"x-amzn-RequestId": request_id}
        if not code.isdigit():  # the runtime's 413 has no error type: botocore reports the status as the code
            headers["x-amzn-ErrorType"] = code
        return JSONResponse(body, status, headers)

    async def invocations(request: Request) -> Response:
        request_id = str(uuid.uuid4())
        params: dict[str, Any] = {"EndpointName": request.path_params["name"], "Body": await _body(request)}
        for header, param in HEADER_PARAMS.items():
            if header in request.headers:
                params[param] = request.headers[header]
        try:
            result = await run_in_threadpool(runtime.invoke_endpoint, **params)
        except ClientError as err:
            return error_response(err, request_id)
        except ParamValidationError as err:
            return error_response(runtime_error("ValidationError", str(err)), request_id)
        headers = {"x-Amzn-Invoked-Production-Variant": result["InvokedProductionVariant"]}
        headers["x-amzn-RequestId"] = request_id
        if result.get("CustomAttributes"):
            headers["X-Amzn-SageMaker-Custom-Attributes"] = result["CustomAttributes"]
        return Response(result["Body"].read(), headers=headers, media_type=result["ContentType"])

    async def ping(request: Request) -> Response:
        return JSONResponse({"status": "ok", "api": "sagemaker-runtime", "pid": os.getpid()})

    async def unknown(request: Request) -> Response:
        message = f"{request.method} {request.url.path} is not an operation of the local SageMaker Runtime API"
        return JSONResponse({"message": message}, 404, {"x-amzn-ErrorType": "UnknownOperationException"})

    async def internal_failure(request: Request, exc: Exception) -> Response:
        # The traceback goes to runtime.log (Starlette re-raises to uvicorn after this answer).
        message = f"the local SageMaker Runtime gateway failed: {type(exc).__name__}: {exc} (see its log)"
        return JSONResponse({"message": message}, 500, {"x-amzn-ErrorType": "InternalFailure"})

    routes = [
        Route("/endpoints/{name}/invocations", invocations, methods=["POST"]),
        Route("/ping", ping, methods=["GET"]),
        Route("/{path:path}", unknown, methods=["GET", "POST", "PUT", "DELETE"]),
    ]
    return Starlette(routes=routes, exception_handlers={Exception: internal_failure})


async def _body(request) -> bytes:
    """The request body, kept up to MAX_BODY_BYTES + 1 (enough for the runtime to answer 413) and
    drained past that, so the client gets the answer rather than a reset connection."""
    kept, size = bytearray(), 0
    async for chunk in request.stream():
        size += len(chunk)
        if len(kept) <= MAX_BODY_BYTES:
            kept += chunk[: MAX_BODY_BYTES + 1 - len(kept)]
    return bytes(kept)


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description="The SageMaker Runtime API of the local endpoints, on 127.0.0.1.")
    parser.add_argument("--fd", type=int, required=True, help="an inherited listening socket on 127.0.0.1")
    parser.add_argument("--home", type=Path, required=True, help="$MLOPS_HOME (the local service's state)")
    parser.add_argument("--region", required=True)
    parser.add_argument("--account-id", required=True)
    parser.add_argument(
        "--ahead-since",
        type=float,
        help="started ahead of a deploy: import at low priority until runtime.hurry is touched after this time",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import socket

    sock = socket.socket(fileno=args.fd)
    if sock.getsockname()[0] != process.HOST:
        raise SystemExit(f"refusing to serve on {sock.getsockname()[0]}: the gateway binds {process.HOST} only")
    # Started ahead, its imports take only the core time the pipeline's jobs leave, until a deploy
    # waits for it (idle_core.py, as the standby server).
    hurry = process.endpoints_dir(args.home) / HURRY
    ahead = args.ahead_since is not None
    with idle_core.lowered(lambda: _touched_since(hurry, args.ahead_since)) if ahead else contextlib.nullcontext() as how:
        app = create_app(args.home, args.region, args.account_id)
    if how is not None:
        log.info("started ahead of the deploy: imports done %s", how)
    threading.Thread(target=_watch, args=(args.home,), name="idle-watch", daemon=True).start()
    log.info("SageMaker Runtime gateway (pid %d) on http://%s:%d", os.getpid(), *sock.getsockname()[:2])
    config = uvicorn.Config(app, log_config=None, log_level="warning", access_log=False, timeout_graceful_shutdown=5)
    uvicorn.Server(config).run(sockets=[sock])


def _watch(home: Path) -> None:
    """Exit (SIGTERM to this process: uvicorn shuts down cleanly) when the gateway is not needed or
    not ours any more: no endpoint record and no standby server for two checks in a row (the
    endpoints went away without stop_endpoint's hook, e.g. a wiped folder), or runtime.json names
    another process. A gateway is then never left behind by a caller that died or could not stop it."""
    idle = 0
    while True:
        time.sleep(WATCH_SECONDS)
        try:
            record = read_gateway(home)
            if record is None or record.pid != os.getpid():
                log.info("runtime.json does not name this gateway (pid %d) any more: exiting", os.getpid())
                break
            directory = process.endpoints_dir(home)
            idle = 0 if needed(directory) else idle + 1
            if idle >= 2:
                log.info("no local endpoint is recorded in %s and no standby server waits: exiting", directory)
                with _locked(home, hurry=False):
                    if (current := read_gateway(home)) is not None and current.pid == os.getpid():
                        runtime_path(home).unlink(missing_ok=True)
                break
        except OSError as exc:  # an unreadable folder this time: the next check decides
            log.warning("checking whether the gateway is still needed failed: %s", exc)
    os.kill(os.getpid(), signal.SIGTERM)


def _touched_since(path: Path, since: float) -> bool:
    try:
        return path.stat().st_mtime >= since
    except FileNotFoundError:
        return False


def needed(directory: Path) -> bool:
    """An endpoint server is recorded in ``directory``, or a standby server waits there for a deploy
    that is coming (a run that will deploy starts both with this gateway, ahead of it)."""
    return any(p.name != RUNTIME_FILE for p in directory.glob("*.json")) or standby.waiting(directory)


# --- the process -----------------------------------------------------------------------------


def runtime_path(home: Path) -> Path:
    return process.endpoints_dir(home) / RUNTIME_FILE


def read_gateway(home: Path) -> GatewayRecord | None:
    """The recorded gateway, alive or not; None without a record (or an unreadable one)."""
    path = runtime_path(home)
    try:
        data = json.loads(path.read_text())
        return GatewayRecord(**{k: v for k, v in data.items() if k in _FIELDS})
    except FileNotFoundError:
        return None
    except (ValueError, TypeError) as exc:
        log.warning("%s is not a gateway record (%s): it is replaced", path, exc)
        return None


def is_alive(record: GatewayRecord) -> bool:
    return process._same_process(record.pid, record.pid_create_time) and process._ping(record.port) == 200


@contextlib.contextmanager
def _locked(home: Path, hurry: bool = True) -> Iterator[None]:
    """The gateway's lock. ``hurry``: first tell a gateway started ahead and still importing, at low
    priority, under this lock, to go on at normal priority: every caller but the one starting it
    ahead needs the lock soon."""
    directory = process.endpoints_dir(home)
    directory.mkdir(parents=True, exist_ok=True)
    if hurry:
        (directory / HURRY).touch()
    with open(directory / ".runtime.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def ensure_gateway(home: Path, region: str, account_id: str, ahead: bool = False) -> GatewayRecord:
    """The running gateway of ``home``, or a new one (same port if free) if it is missing, dead or
    was started for another region or account. ``ahead``: for a deploy that comes later (its imports
    run at low priority); otherwise one started ahead and still importing is told to hurry."""
    with _locked(home, hurry=not ahead):
        decided = time.time()
        current = read_gateway(home)
        if current is not None and (current.region, current.account_id) == (region, account_id) and is_alive(current):
            return current
        if current is not None:
            process._terminate(current)
        since = decided - HURRY_MARGIN_SECONDS if ahead else None
        return _start(home, region, account_id, [current.port, 0] if current else [0], since)


def _start(home: Path, region: str, account_id: str, ports: list[int], ahead_since: float | None = None) -> GatewayRecord:
    directory = process.endpoints_dir(home)
    log_file = directory / "runtime.log"
    sock = process._bind(ports, "runtime gateway")
    port = sock.getsockname()[1]
    args = ["--fd", str(sock.fileno()), "--home", str(Path(home).resolve()), "--region", region]
    args += ["--account-id", account_id]
    if ahead_since is not None:
        args += ["--ahead-since", repr(ahead_since)]
    proc = None
    try:
        with open(log_file, "ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-P", "-c", _BOOTSTRAP, str(process._PACKAGE_DIR), *args],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                pass_fds=(sock.fileno(),),
                start_new_session=True,  # outlives the deploy that started it, like the endpoint servers
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        process._children[proc.pid] = proc
        sock.close()
        _wait_until_up(proc, port, log_file)
        created = psutil.Process(proc.pid).create_time()
    except BaseException:
        if proc is not None:
            process._kill(proc)
        raise
    finally:
        sock.close()
    record = GatewayRecord(
        url=f"http://{process.HOST}:{port}",
        port=port,
        pid=proc.pid,
        pid_create_time=created,
        region=region,
        account_id=account_id,
        home=str(Path(home).resolve()),
        log=str(log_file),
        started_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    _write(runtime_path(home), record)
    return record


def _wait_until_up(proc: subprocess.Popen, port: int, log_file: Path) -> None:
    deadline = time.monotonic() + process.START_DEADLINE_SECONDS
    while process._ping(port) != 200:
        if proc.poll() is not None:
            raise process.EndpointError(
                f"the SageMaker Runtime gateway exited with code {proc.returncode} before answering /ping; "
                f"the end of {log_file}:\n{process._tail(log_file)}"
            )
        if time.monotonic() > deadline:
            raise process.EndpointError(
                f"the SageMaker Runtime gateway did not answer /ping within "
                f"{process.START_DEADLINE_SECONDS:.0f} s; see {log_file}"
            )
        time.sleep(0.05)


def _write(path: Path, record: GatewayRecord) -> None:
    """Temp file + rename: a reader sees a whole record or none."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(asdict(record), f, indent=2)
        os.chmod(tmp, 0o644)  # no secret in it: other tools of the user read it
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def stop_gateway(home: Path) -> bool:
    """Stop the gateway and remove runtime.json; True if a running gateway was stopped."""
    with _locked(home):
        record = read_gateway(home)
        stopped = record is not None and process._terminate(record)
        runtime_path(home).unlink(missing_ok=True)
        return stopped


def stop_if_idle(home: Path) -> bool:
    """Stop the gateway when no endpoint server record is left (called after each stop_endpoint)."""
    if not runtime_path(home).exists():
        return False
    directory = process.endpoints_dir(home)
    if any(path.name != RUNTIME_FILE for path in directory.glob("*.json")):
        return False
    return stop_gateway(home)
