"""The local endpoint: SageMaker's inference contract over HTTP, with blue/green model deploys.

    GET  /ping           200 when a model is live, 503 before the first deploy; the JSON body
                         has the data capture counts ({"status": "ok", "capture": {...}})
    POST /invocations    Content-Type text/csv or application/json; the response type follows
                         Accept (below). 400 malformed rows (the row and reason) or JSON nested
                         too deeply, 406 Accept, 415 Content-Type: {"error": reason}, decided by
                         inference.py; 500 model failure (an HTML page, as Flask's); 400 a bad
                         X-Amzn-SageMaker-Inference-Id, 413 body over 6 MB, 503 no model
    POST /admin/deploy   X-Admin-Token; {"model_data", "sha256", "model_package_arn", "smoke_rows",
                         "capture": null | {"settings": CaptureSettings, "store_root": dir}}
    GET  /admin/status   X-Admin-Token; the live model, request, capture and batching counts
    POST /admin/flush-capture  X-Admin-Token; write what capture has queued, then its counts

Data capture (monitoring.capture): when the live deploy carries capture settings (the endpoint
config's DataCaptureConfig), each 200 answer of /invocations is sampled and its request and
response handed to a background writer (bounded queue, one .jsonl object per flush in the local
object store); X-Amzn-SageMaker-Inference-Id becomes the record's inferenceId. Capture never
fails or delays a request: a full queue or a failed write is counted (in /ping) and logged. The
queue is flushed when the server stops cleanly (SIGTERM: the ASGI lifespan's shutdown); a kill -9
loses what was not yet written, at most about capture.FLUSH_SECONDS (1 s) of traffic.

Same answers as the container. /invocations hands the handlers what the scikit-learn container's
worker (sagemaker-containers 2.8.6, Flask) hands them, and answers what that worker answers for
the same request (tests/test_serving_container.py runs the real worker and compares): the
Content-Type is the ContentType or Content-Type header, else application/json; the body is text
(UTF-8, undecodable bytes replaced) for exactly text/csv or application/json, else bytes; Accept
is passed as sent, a missing header or */* being SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT (default
application/json). inference.py then negotiates Accept and refuses a request with its status
(400/415/406), which it also makes the container answer. Still different: /ping's body (the
worker's is empty), the 500 page (the worker's does not name the failure), and 400 inference id /
413 / 503, which are the runtime's answers on AWS, not the container's.

Batching (batching.py): the rows of requests that arrive together on the same live model are
predicted by one predict_fn call and split back by row counts; input_fn and output_fn stay per
request (each with its own Accept, its own 400/406). Small bodies (INLINE_BODY_BYTES) are parsed and
answered on the event loop, bigger ones in a worker thread. MLOPS_ENDPOINT_BATCHING=off predicts each
request alone; MLOPS_ENDPOINT_BATCH_MAX_ROWS and _BATCH_MAX_WAIT_MS bound a batch (read at start).

A deploy loads the candidate beside the live model: sha256 of model.tar.gz checked before
anything is extracted or unpickled, extraction with tarfile's "data" filter into a fresh
version directory, model_fn, a smoke prediction. Only then does the live slot switch, by one
reference assignment: requests in flight finish on the model they started with. Any failure
leaves the old model serving and answers 409 {"error": reason}.

The request handlers are training/inference.py, loaded by path: the SageMaker container and this
server run the same file. Run with `python -m mlops_dagster.serving.app --port 8080 --token-file F
--model-root DIR` (process.py starts it without importing the whole code location).

With --log-file the log is size-bounded: the file is rotated before it passes --log-max-bytes and
one older part is kept (<file>.1), each record is cut to a quarter of the bound (8,000 characters at
most), and the process's stdout and stderr follow the current file. A client error on /invocations
is one log line; a model failure is a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import html
import importlib.util
import ipaddress
import json
import logging
import logging.handlers
import math
import os
import re
import shutil
import socket
import stat
import sys
import tarfile
import tempfile
import zlib
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from .batching import Batcher, BatchSettings
from .capture import CLOSE_SECONDS, CaptureSpec, ServerCapture

MAX_BODY_BYTES = 6 * 1024 * 1024  # SageMaker's InvokeEndpoint payload limit
INFERENCE_PY = Path(__file__).resolve().parents[2] / "training" / "inference.py"
DEFAULT_ACCEPT = "application/json"
CSV, JSON = "text/csv", "application/json"
SHA256 = re.compile(r"[0-9a-f]{64}")
HOST = "127.0.0.1"
LOG_MAX_BYTES = 10 * 1024 * 1024  # the default bound of --log-file (process.py passes its own)
LOG_RECORD_CHARS = 8000  # a record longer than this (or a quarter of the bound) is cut
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
INFERENCE_ID_HEADER = "x-amzn-sagemaker-inference-id"
# Bodies up to this size are parsed and answered on the event loop (tens of microseconds: less than
# a hop to a worker thread and back); larger ones in a worker thread, so that the loop keeps serving.
INLINE_BODY_BYTES = 4096
INFERENCE_ID_MAX = 64  # InvokeEndpoint's InferenceId: 1 to 64 printable characters, not starting with a space

log = logging.getLogger("mlops_dagster.serving")


class BodyTooLarge(Exception):
    pass


class DeployError(Exception):
    """The candidate model was refused; the message is the reason given to the caller."""


def load_handlers(path: Path = INFERENCE_PY) -> ModuleType:
    """training/inference.py as a module (by path: it is a container script, not a package)."""
    spec = importlib.util.spec_from_file_location("mlops_serving_inference", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load the inference handlers from {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def server_error(message: str) -> HTMLResponse:
    """500 as the container's Flask worker answers it (text/html), but naming the failure: the
    container's page is generic, its reason only in the endpoint's log."""
    page = (
        '<!DOCTYPE HTML PUBLIC "-//W3C//DTD HTML 3.2 Final//EN">\n<title>500 Internal Server Error</title>\n'
        f"<h1>Internal Server Error</h1>\n<p>{html.escape(message)}</p>\n"
    )
    return HTMLResponse(page, status_code=500)


def client_error(status: int, message: str) -> JSONResponse:
    """An /invocations error that is the caller's: one log line (the reason cut), then the answer."""
    shown = message if len(message) <= 300 else f"{message[:300]}... ({len(message) - 300} characters cut)"
    log.info("/invocations answered %d: %s", status, shown)
    return error(status, message)


# --- the live slot ---------------------------------------------------------------------------


@dataclass
class LiveModel:
    model: Any  # what model_fn returned
    sha256: str
    model_package_arn: str | None
    model_data: str
    version_dir: Path
    loaded_at: str
    requests: int = 0

    def info(self) -> dict:
        return {
            "model_package_arn": self.model_package_arn,
            "sha256": self.sha256,
            "model_data": self.model_data,
            "loaded_at": self.loaded_at,
            "version_dir": str(self.version_dir),
            "features": list(self.model.features),
            "requests": self.requests,
        }


class Endpoint:
    """State of one server: the live model slot, the admin token, where versions are extracted."""

    def __init__(
        self,
        handlers: ModuleType,
        token: str,
        model_root: Path,
        default_accept: str = DEFAULT_ACCEPT,
        batching: BatchSettings | None = None,
    ):
        if not token:
            raise ValueError("an admin token is required")
        self.handlers = handlers
        self.token = token
        self.model_root = Path(model_root)
        self.default_accept = default_accept
        self.live: LiveModel | None = None  # replaced whole, never mutated in place (but its counter)
        self.deploy_lock = asyncio.Lock()
        self.requests_total = 0
        self.started_at = utc_now()
        self.capture = ServerCapture()
        self.batcher = Batcher(self._predict, batching or BatchSettings(), run_in_threadpool)

    def denied(self, request: Request) -> Response | None:
        given = request.headers.get("x-admin-token")
        if given is None:
            return error(401, "the X-Admin-Token header is required")
        if not hmac.compare_digest(given.encode(), self.token.encode()):
            return error(403, "wrong admin token")
        return None

    async def answer(self, live: LiveModel, body: bytes, content_type: str, accept: str) -> tuple[str, str]:
        """One request on the model it started with: input_fn, predict_fn in a batch with the
        requests that arrive together (batching.py), output_fn with this request's own Accept."""
        h = self.handlers
        if len(body) > INLINE_BODY_BYTES:
            data, answered = await run_in_threadpool(self._parse_or_answer, live, body, content_type, accept)
            if answered is not None:
                return answered
            return await run_in_threadpool(h.output_fn, await self.batcher.predict(live, data), accept)
        data = h.input_fn(worker_content(body, content_type), content_type, live.model.features)
        return h.output_fn(await self.batcher.predict(live, data), accept)

    def _parse_or_answer(self, live: LiveModel, body: bytes, content_type: str, accept: str) -> tuple[Any, Any]:
        """In a worker thread: the rows to batch, or, for a request the batcher does not take (too
        many rows, batching off), the whole answer, so that a big request costs one hop as before."""
        h = self.handlers
        data = h.input_fn(worker_content(body, content_type), content_type, live.model.features)
        if self.batcher.takes(data):
            return data, None
        self.batcher.counts.alone += 1
        return None, h.output_fn(h.predict_fn(data, live.model), accept)

    def _predict(self, live: LiveModel, data: Any) -> Any:
        return self.handlers.predict_fn(data, live.model)

    def invoke(self, live: LiveModel, body: bytes, content_type: str, accept: str) -> tuple[str, str]:
        """One request, unbatched, in the calling thread (for a direct call outside the server)."""
        h = self.handlers
        data = h.input_fn(worker_content(body, content_type), content_type, live.model.features)
        return h.output_fn(h.predict_fn(data, live.model), accept)


# --- HTTP helpers ----------------------------------------------------------------------------


def worker_headers(request: Request, default_accept: str) -> tuple[str, str]:
    """(content type, accept) as the container's worker (sagemaker_containers._worker.Request)
    reads them: ContentType or Content-Type, else application/json; Accept as sent, unless it is
    missing, empty or exactly */* (then the default)."""
    headers = request.headers
    content_type = headers.get("contenttype") or headers.get("content-type") or JSON
    accept = headers.get("accept")
    return content_type, accept if accept and accept != "*/*" else default_accept


def worker_content(body: bytes, content_type: str) -> bytes | str:
    """The body as the worker hands it to input_fn: text for exactly text/csv or application/json
    (werkzeug's get_data(as_text=True): UTF-8, undecodable bytes replaced), bytes otherwise."""
    return body.decode("utf-8", "replace") if content_type in (CSV, JSON) else body


def declared_length(request: Request) -> int | None:
    value = request.headers.get("content-length")
    return int(value) if value is not None and value.strip().isdigit() else None


async def read_body(request: Request, limit: int = MAX_BODY_BYTES) -> bytes:
    """The body, refused once it passes ``limit``: by Content-Length, else by the bytes streamed
    (a chunked or lying client cannot get more than ``limit`` bytes into memory)."""
    declared = declared_length(request)
    if declared is not None and declared > limit:
        raise BodyTooLarge(f"the body is {declared} bytes, above the limit of {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"the body is above the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


# --- routes ----------------------------------------------------------------------------------


async def ping(request: Request) -> Response:
    ep: Endpoint = request.app.state.endpoint
    if ep.live is None:
        return error(503, "no model is deployed")
    return JSONResponse({"status": "ok", "capture": ep.capture.status()})


def inference_id(request: Request) -> tuple[str | None, str | None]:
    """(X-Amzn-SageMaker-Inference-Id, None) or (None, why it is refused), as InvokeEndpoint checks it."""
    value = request.headers.get(INFERENCE_ID_HEADER)
    if value is None:
        return None, None
    if not 1 <= len(value) <= INFERENCE_ID_MAX or value[0].isspace() or not value.isprintable():
        return None, (
            f"X-Amzn-SageMaker-Inference-Id must be 1 to {INFERENCE_ID_MAX} printable characters, "
            "not starting with a space"
        )
    return value, None


async def invocations(request: Request) -> Response:
    ep: Endpoint = request.app.state.endpoint
    content_type, accept = worker_headers(request, ep.default_accept)
    declared = declared_length(request)
    if declared is not None and declared > MAX_BODY_BYTES:  # from the header: the body is never read
        return client_error(413, f"the body is {declared} bytes, above the limit of {MAX_BODY_BYTES}")
    request_id, refused = inference_id(request)
    if refused:
        return client_error(400, refused)
    live = ep.live  # this request's model, whatever a deploy does meanwhile
    if live is None:
        return error(503, "no model is deployed")
    try:
        body = await read_body(request)
    except BodyTooLarge as exc:
        return client_error(413, str(exc))
    ep.requests_total += 1  # counters change on the event loop thread only
    live.requests += 1
    try:
        payload, media_type = await ep.answer(live, body, content_type, accept)
    except ep.handlers.REFUSALS as exc:  # a bad row, Content-Type or Accept: the status is inference.py's
        return client_error(exc.status, str(exc))
    except Exception as exc:
        log.exception("prediction failed on model %s", live.sha256[:12])
        return server_error(f"the model failed: {type(exc).__name__}: {exc}")
    response = Response(payload, media_type=media_type)
    content_type_header = request.headers.get("content-type", "")
    ep.capture.request(body, content_type_header, response.body, response.headers["content-type"], request_id)
    return response


async def deploy(request: Request) -> Response:
    ep: Endpoint = request.app.state.endpoint
    if (denied := ep.denied(request)) is not None:
        return denied
    try:
        spec = DeployRequest.from_json(await read_body(request))
    except BodyTooLarge as exc:
        return error(413, str(exc))
    except ValueError as exc:
        return error(400, str(exc))
    async with ep.deploy_lock:  # one candidate at a time
        previous = ep.live
        if previous is not None and previous.sha256 == spec.sha256:
            refused = await _configure_capture(ep, spec.capture)  # the config may differ in capture only
            if refused is not None:
                return refused
            return JSONResponse({"changed": False, "live": previous.info(), "capture": ep.capture.status()})
        try:
            candidate = await run_in_threadpool(prepare_candidate, ep.handlers, spec, ep.model_root)
        except Exception as exc:
            reason = str(exc) if isinstance(exc, DeployError) else f"{type(exc).__name__}: {exc}"
            log.warning("deploy of %s refused: %s", spec.sha256[:12], reason)
            return error(409, reason)
        refused = await _configure_capture(ep, spec.capture)  # before the switch: a refusal keeps the old model
        if refused is not None:
            shutil.rmtree(candidate.version_dir, ignore_errors=True)
            return refused
        ep.live = candidate  # the switch
        keep = {candidate.version_dir} | ({previous.version_dir} if previous else set())
        await run_in_threadpool(prune_versions, ep.model_root, keep)
    log.info("live model is now %s (%s) from %s", spec.sha256[:12], spec.model_package_arn, spec.model_data)
    return JSONResponse(
        {
            "changed": True,
            "live": candidate.info(),
            "previous": previous.info() if previous else None,
            "capture": ep.capture.status(),
        }
    )


async def _configure_capture(ep: Endpoint, spec: CaptureSpec | None) -> Response | None:
    """Apply the deploy's capture settings; a 409 answer if the capture store cannot be opened."""
    try:
        await run_in_threadpool(ep.capture.configure, spec)
    except Exception as exc:
        log.warning("capture settings refused: %s: %s", type(exc).__name__, exc)
        return error(409, f"data capture cannot start: {type(exc).__name__}: {exc}")
    return None


async def status(request: Request) -> Response:
    ep: Endpoint = request.app.state.endpoint
    if (denied := ep.denied(request)) is not None:
        return denied
    live = ep.live
    return JSONResponse(
        {
            "live": live.info() if live else None,
            "requests_total": ep.requests_total,
            "started_at": ep.started_at,
            "pid": os.getpid(),
            "capture": ep.capture.status(),
            "batching": {**asdict(ep.batcher.settings), **ep.batcher.counts.as_dict()},
        }
    )


async def flush_capture(request: Request) -> Response:
    ep: Endpoint = request.app.state.endpoint
    if (denied := ep.denied(request)) is not None:
        return denied
    if not await run_in_threadpool(ep.capture.flush):
        return error(503, f"capture did not flush within {CLOSE_SECONDS:.0f} s; see the log")
    return JSONResponse({"capture": ep.capture.status()})


@asynccontextmanager
async def lifespan(app: Starlette):
    """On a clean stop (SIGTERM, Ctrl-C), after the last request: write what capture holds."""
    yield
    await run_in_threadpool(app.state.endpoint.capture.close)


def create_app(
    token: str, model_root: Path, handlers: ModuleType | None = None, batching: BatchSettings | None = None
) -> Starlette:
    """The ASGI app; ``model_root`` receives one directory per deployed model version. ``batching``
    defaults to the environment's MLOPS_ENDPOINT_BATCHING, _BATCH_MAX_ROWS, _BATCH_MAX_WAIT_MS."""
    default_accept = os.environ.get("SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT", DEFAULT_ACCEPT)
    if default_accept not in (CSV, JSON):
        raise ValueError(f"SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT={default_accept!r}: use text/csv or application/json")
    app = Starlette(
        routes=[
            Route("/ping", ping, methods=["GET"]),
            Route("/invocations", invocations, methods=["POST"]),
            Route("/admin/deploy", deploy, methods=["POST"]),
            Route("/admin/status", status, methods=["GET"]),
            Route("/admin/flush-capture", flush_capture, methods=["POST"]),
        ],
        lifespan=lifespan,
    )
    batching = batching or BatchSettings.from_environ(os.environ)
    app.state.endpoint = Endpoint(handlers or load_handlers(), token, model_root, default_accept, batching)
    return app


# --- deploying a candidate -------------------------------------------------------------------


@dataclass(frozen=True)
class DeployRequest:
    model_data: Path
    sha256: str
    model_package_arn: str | None
    smoke_rows: list
    capture: CaptureSpec | None = None

    @classmethod
    def from_json(cls, body: bytes) -> DeployRequest:
        try:
            data = json.loads(body)
        except ValueError as exc:
            raise ValueError(f"the deploy request is not JSON ({exc})") from None
        if not isinstance(data, dict):
            raise ValueError("the deploy request must be a JSON object")
        model_data, sha256 = data.get("model_data"), data.get("sha256")
        arn, rows = data.get("model_package_arn"), data.get("smoke_rows")
        if not isinstance(model_data, str) or not Path(model_data).is_absolute():
            raise ValueError('"model_data" must be the absolute local path of a model.tar.gz')
        if not isinstance(sha256, str) or not SHA256.fullmatch(sha256.lower()):
            raise ValueError('"sha256" must be 64 hexadecimal digits')
        if arn is not None and not isinstance(arn, str):
            raise ValueError('"model_package_arn" must be a string')
        if not isinstance(rows, list) or not rows:
            raise ValueError('"smoke_rows" must be a non-empty list of rows to predict before the switch')
        return cls(Path(model_data), sha256.lower(), arn, rows, CaptureSpec.from_json(data.get("capture")))


def prepare_candidate(handlers: ModuleType, spec: DeployRequest, model_root: Path) -> LiveModel:
    """Verify, extract, load and smoke-test a model in a new version directory (removed on failure)."""
    model_root.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    version_dir = Path(tempfile.mkdtemp(prefix=f"{stamp}-{spec.sha256[:12]}-", dir=model_root))
    try:
        archive = copy_verified(spec.model_data, spec.sha256, version_dir / "model.tar.gz")
        model_dir = extract(archive, version_dir / "model")
        try:
            model = handlers.model_fn(str(model_dir))
        except Exception as exc:
            raise DeployError(f"model_fn failed on {spec.model_data}: {type(exc).__name__}: {exc}") from exc
        smoke_test(handlers, model, spec.smoke_rows)
    except BaseException:
        shutil.rmtree(version_dir, ignore_errors=True)
        raise
    return LiveModel(model, spec.sha256, spec.model_package_arn, str(spec.model_data), version_dir, utc_now())


def copy_verified(source: Path, sha256: str, target: Path) -> Path:
    """Copy ``source`` while hashing it; what is extracted later is this private copy, so the
    file checked is the file loaded (the source could change after the check)."""
    digest = hashlib.sha256()
    try:
        if not stat.S_ISREG(source.stat().st_mode):  # not a device or a pipe that never ends
            raise DeployError(f"model_data {source} is not a regular file")
        with open(source, "rb") as src, open(target, "wb") as dst:
            while chunk := src.read(1 << 20):
                digest.update(chunk)
                dst.write(chunk)
    except OSError as exc:
        raise DeployError(f"cannot read model_data {source}: {exc.strerror or exc}") from exc
    if digest.hexdigest() != sha256:
        raise DeployError(
            f"sha256 mismatch for {source}: expected {sha256}, the file has {digest.hexdigest()}; not loading it"
        )
    return target


def extract(archive: Path, target: Path) -> Path:
    """Extract with the "data" filter: no absolute paths, no escaping links, no devices."""
    target.mkdir()
    try:
        with tarfile.open(archive, "r:*") as tar:
            tar.extractall(target, filter="data")
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise DeployError(f"cannot extract model.tar.gz: {type(exc).__name__}: {exc}") from exc
    return target


def smoke_test(handlers: ModuleType, model: Any, rows: list) -> None:
    """Predict ``rows`` with the candidate: one finite number per row, or the deploy is refused."""
    try:
        data = handlers.input_fn(json.dumps({"instances": rows}), JSON, model.features)
    except handlers.InvalidInput as exc:
        raise DeployError(f"the smoke rows do not fit the candidate model: {exc}") from exc
    try:
        predictions = np.asarray(handlers.predict_fn(data, model), dtype=float)
    except Exception as exc:
        raise DeployError(f"smoke test: predict failed: {type(exc).__name__}: {exc}") from exc
    if predictions.shape != (len(rows),):
        raise DeployError(f"smoke test: {len(rows)} rows gave predictions of shape {predictions.shape}")
    bad = [i + 1 for i, value in enumerate(predictions.tolist()) if not math.isfinite(value)]
    if bad:
        raise DeployError(f"smoke test: the predictions for rows {bad} are not finite numbers")


def prune_versions(model_root: Path, keep: set[Path]) -> None:
    """Version directories other than the live and the previous one are not needed any more."""
    for path in model_root.iterdir():
        if path.is_dir() and path not in keep:
            shutil.rmtree(path, ignore_errors=True)


# --- the server process ----------------------------------------------------------------------


def read_token(path: Path) -> str:
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SystemExit(f"{path} is readable by others (mode {oct(mode & 0o777)}); chmod 600 it")
    token = path.read_text().strip()
    if not token:
        raise SystemExit(f"{path} is empty")
    return token


def listening_socket(fd: int | None, port: int) -> socket.socket:
    """The inherited socket (process.py binds it, so the port is known before start), or a new one."""
    if fd is None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((HOST, port))
    else:
        sock = socket.socket(fileno=fd)
    address = sock.getsockname()[0]
    if not ipaddress.ip_address(address).is_loopback:  # the endpoint never listens beyond this host
        raise SystemExit(f"refusing to serve on {address}: the local endpoint binds {HOST} only")
    return sock


class BoundedFormatter(logging.Formatter):
    """Cuts a record (message and traceback) to ``limit`` characters, saying how much was cut."""

    def __init__(self, limit: int):
        super().__init__(LOG_FORMAT)
        self.limit = limit

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if len(text) <= self.limit:
            return text
        return f"{text[: self.limit]}... ({len(text) - self.limit} characters cut)"


class ServerLogHandler(logging.handlers.RotatingFileHandler):
    """The server's log file, rotated before it passes ``max_bytes`` (one older part, <file>.1).

    The process's stdout and stderr are pointed at the current file after each rotation, so what
    bypasses logging (a stray print, a fatal error) lands there too and is counted in its size.
    """

    def __init__(self, path: Path, max_bytes: int):
        super().__init__(path, maxBytes=max_bytes, backupCount=1, encoding="utf-8")
        self.setFormatter(BoundedFormatter(min(LOG_RECORD_CHARS, max_bytes // 4)))
        self._redirect_std_streams()

    def doRollover(self) -> None:
        super().doRollover()
        self._redirect_std_streams()

    def _redirect_std_streams(self) -> None:
        if self.stream is None:
            self.stream = self._open()
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                stream.flush()
        for fd in (1, 2):
            os.dup2(self.stream.fileno(), fd)


def configure_logging(log_file: Path | None, max_bytes: int) -> None:
    """INFO and above to the size-bounded ``log_file``, or to stderr when there is none."""
    if log_file is None:
        logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
        return
    logging.basicConfig(level=logging.INFO, handlers=[ServerLogHandler(log_file, max_bytes)], force=True)


def log_bound(value: str) -> int:
    """argparse type of --log-max-bytes: at least 4 KiB, so that a cut record still says something."""
    number = int(value)
    if number < 4096:
        raise argparse.ArgumentTypeError(f"{value} is below the minimum of 4096 bytes")
    return number


def main(argv: list[str] | None = None) -> None:
    import uvicorn  # here: importing the app (tests, process.py) does not need the server

    parser = argparse.ArgumentParser(description="Local SageMaker-style endpoint on 127.0.0.1.")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--fd", type=int, help="an inherited listening socket (instead of --port)")
    parser.add_argument("--token-file", type=Path, required=True, help="admin token, mode 0600")
    parser.add_argument("--model-root", type=Path, required=True, help="where model versions are extracted")
    parser.add_argument("--name", default="endpoint", help="shown in the log")
    parser.add_argument("--log-file", type=Path, help="the log, rotated by size (default: stderr, unbounded)")
    parser.add_argument(
        "--log-max-bytes", type=log_bound, default=LOG_MAX_BYTES, help="rotate --log-file before it passes this size"
    )
    args = parser.parse_args(argv)
    configure_logging(args.log_file, args.log_max_bytes)

    try:
        batching = BatchSettings.from_environ(os.environ)
    except ValueError as exc:  # before anything is served: process.py shows this in its error
        raise SystemExit(f"endpoint {args.name}: {exc}") from None
    app = create_app(read_token(args.token_file), args.model_root, batching=batching)
    sock = listening_socket(args.fd, args.port)
    log.info(
        "endpoint %s (pid %d) serving on http://%s:%d; %s",
        args.name,
        os.getpid(),
        *sock.getsockname()[:2],
        batching.describe(),
    )
    # log_config=None: uvicorn's loggers propagate to the root handler above instead of its own
    # stderr handlers, so they are formatted, cut and rotated like the rest.
    # lifespan "on": its shutdown writes what capture holds (uvicorn re-raises SIGTERM after serve,
    # so code after run() would not run).
    config = uvicorn.Config(
        app, log_config=None, log_level="info", access_log=False, lifespan="on", timeout_graceful_shutdown=5
    )
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    main()
