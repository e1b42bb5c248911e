"""The scikit-learn container's serving worker next to the local endpoint, request by request.

The scikit-learn 1.2-1 image serves training/inference.py through sagemaker-containers 2.8.6.post2
(Flask 1.1.1 under gunicorn): sagemaker_sklearn_container.serving wraps the module's
model_fn/input_fn/predict_fn/output_fn in sagemaker_containers' Transformer and serves its
transform() with sagemaker_containers' Worker (a Flask app). This script builds that same Worker,
from the published packages at the image's pins, in its own venv (the worker needs Flask 1.1.1 and
Python 3.9's collections.Mapping), and sends it and the local server (mlops_dagster.serving.app,
in process) the same requests. gunicorn and nginx are left out: they pass requests through.

    .venv/bin/python scripts/serving_container.py      # prints the comparison table

tests/test_serving_container.py asserts the same comparison.
"""

from __future__ import annotations

import asyncio
import fcntl
import glob
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import textwrap
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
INFERENCE_PY = ROOT / "training" / "inference.py"
PACKAGE = "sagemaker-containers"
VERSION = "2.8.6.post2"
# The scikit-learn 1.2-1 image's pins (requirements.txt of aws/sagemaker-scikit-learn-container),
# but pandas 1.5.3 (the image's 1.1.3 has no wheel for every Python this may run on).
PINS = (
    "Flask==1.1.1",
    "Werkzeug==2.0.3",
    "Jinja2==3.0.3",
    "itsdangerous==2.0.1",
    "MarkupSafe==2.1.1",
    "six==1.15.0",
    "numpy==1.24.1",
    "scipy==1.10.1",
    "pandas==1.5.3",
    "scikit-learn==1.2.1",
    "protobuf==3.20.3",
    "boto3",  # imported by sagemaker_containers._env; never called here
)
# pip's words for "the index could not be reached".
OFFLINE_MARKERS = (
    "No matching distribution found",
    "Could not find a version that satisfies",
    "NewConnectionError",
    "Max retries exceeded",
    "Temporary failure in name resolution",
    "Network is unreachable",
)
FEATURES = ["a", "b"]
# A model both sides fit the same way with their own scikit-learn (a pickle does not travel
# between scikit-learn versions): y = 2 a + 3 b + 1.
TRAIN_X = [[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, 3.0]]
TRAIN_Y = [2 * a + 3 * b + 1 for a, b in TRAIN_X]
FAILING_PREDICT = """

def predict_fn(data, model):  # appended by scripts/serving_container.py: a model that fails
    raise RuntimeError("the model failed on purpose")
"""


class IndexUnreachable(RuntimeError):
    """The package index could not be reached, so the real worker cannot be installed."""


@dataclass(frozen=True)
class Case:
    name: str
    method: str
    path: str
    headers: dict
    body: bytes = b""
    handlers: str = "inference"  # or "failing": inference.py whose predict_fn raises


CASES = (
    Case("good CSV", "POST", "/invocations", {"Content-Type": "text/csv", "Accept": "text/csv"}, b"1,2\n3,4\n"),
    Case("good JSON", "POST", "/invocations", {"Content-Type": "application/json"}, b'{"instances": [[1, 2]]}'),
    Case(
        "JSON records, Accept */*",
        "POST",
        "/invocations",
        {"Content-Type": "application/json", "Accept": "*/*"},
        b'[{"a": 1, "b": 2}]',
    ),
    Case(
        "CSV; charset=utf-8 with BOM",
        "POST",
        "/invocations",
        {"Content-Type": "text/csv; charset=utf-8"},
        "\ufeff1,2\n".encode(),
    ),
    Case("CSV text with BOM", "POST", "/invocations", {"Content-Type": "text/csv"}, "\ufeff1,2\n".encode()),
    Case(
        "Accept list with q",
        "POST",
        "/invocations",
        {"Content-Type": "text/csv", "Accept": "text/html, application/json;q=0.5, text/csv;q=0.9"},
        b"1,2\n",
    ),
    Case("Accept text/*", "POST", "/invocations", {"Content-Type": "text/csv", "Accept": "text/*"}, b"1,2\n"),
    Case("no Content-Type, JSON body", "POST", "/invocations", {}, b'{"instances": [[1, 2]]}'),
    Case("no Content-Type, CSV body", "POST", "/invocations", {}, b"1,2\n"),
    Case("wrong Content-Type", "POST", "/invocations", {"Content-Type": "text/plain"}, b"1,2\n"),
    Case("wrong Accept", "POST", "/invocations", {"Content-Type": "text/csv", "Accept": "image/png"}, b"1,2\n"),
    Case("short row", "POST", "/invocations", {"Content-Type": "text/csv"}, b"1,2\n3\n"),
    Case("non-numeric cell", "POST", "/invocations", {"Content-Type": "text/csv"}, b"1,x\n"),
    Case("JSON record lacking a feature", "POST", "/invocations", {"Content-Type": "application/json"}, b'[{"a": 1}]'),
    Case("empty body", "POST", "/invocations", {"Content-Type": "text/csv"}, b""),
    Case("model failure", "POST", "/invocations", {"Content-Type": "text/csv"}, b"1,2\n", "failing"),
    Case("ping", "GET", "/ping", {}),
)

# Run by the worker venv's python: argv[1] a JSON file {"handlers": {name: path}, "base_dir": dir,
# "cases": [...]}; prints {case name: {"status", "content_type", "body" (latin-1)}}.
PROBE = textwrap.dedent(
    """
    import collections, collections.abc, importlib.util, json, os, sys
    if not hasattr(collections, "Mapping"):  # Python 3.10+ only; the image runs 3.9, which has it
        collections.Mapping = collections.abc.Mapping
    spec = json.load(open(sys.argv[1]))
    os.environ["SAGEMAKER_BASE_DIR"] = spec["base_dir"]  # model_dir = <base>/model, as /opt/ml/model
    import joblib
    from sklearn.linear_model import LinearRegression
    model_dir = os.path.join(spec["base_dir"], "model")
    os.makedirs(model_dir)
    joblib.dump(LinearRegression().fit(spec["train_x"], spec["train_y"]), os.path.join(model_dir, "model.joblib"))
    json.dump(spec["features"], open(os.path.join(model_dir, "features.json"), "w"))
    # What sagemaker_sklearn_container.serving does (import_module, _user_module_transformer,
    # main), with the classes beta.framework re-exports (importing beta.framework would pull in
    # the training side's dependencies too).
    from sagemaker_containers import _transformer, _worker
    apps = {}
    for name, path in spec["handlers"].items():
        module_spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
        transformer = _transformer.Transformer(
            model_fn=module.model_fn, input_fn=module.input_fn,
            predict_fn=module.predict_fn, output_fn=module.output_fn,
        )
        transformer.initialize()
        apps[name] = _worker.Worker(transform_fn=transformer.transform, module_name=name).test_client()
    out = {}
    for case in spec["cases"]:
        client = apps[case["handlers"]]
        body = case["body"].encode("latin-1")
        if case["method"] == "GET":
            r = client.get(case["path"], headers=case["headers"])
        else:
            r = client.post(case["path"], data=body, headers=case["headers"])
        out[case["name"]] = {
            "status": r.status_code, "content_type": r.headers.get("Content-Type"),
            "body": r.get_data().decode("latin-1"),
        }
    print(json.dumps(out))
    """
)


# --- the worker's venv -----------------------------------------------------------------------


def container_python() -> str:
    """A Python 3.9 like the image's, else this interpreter (the probe shims collections.Mapping)."""
    candidates = [os.environ.get("MLOPS_PYTHON39"), "python3.9"]
    candidates += sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.9*/bin/python3.9")))
    for candidate in filter(None, candidates):
        try:
            proc = subprocess.run(
                [candidate, "-c", "import sys, venv; print(sys.version_info[:2])"],
                capture_output=True,
                text=True,
                timeout=60,
            )
        except OSError:
            continue
        if proc.returncode == 0 and proc.stdout.strip() == "(3, 9)":
            return candidate
    return sys.executable


def venv_dir(python: str) -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    version = subprocess.run(
        [python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"], capture_output=True, text=True, check=True
    ).stdout.strip()
    return cache / "mlops-dagster" / f"{PACKAGE}-{VERSION}-py{version}-venv"


def worker_python() -> Path:
    """The python of a venv holding the real worker: installed once, then reused from the cache.
    Raises IndexUnreachable when the package index cannot be reached."""
    python = container_python()
    venv = venv_dir(python)
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / f"{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one installer at a time (parallel test workers)
        if not _installed(venv / "bin" / "python"):
            _install(python, venv)
    return venv / "bin" / "python"


def _installed(python: Path) -> bool:
    if not python.exists():
        return False
    check = f"import importlib.metadata as m, flask, sklearn; print(m.version({PACKAGE!r}), flask.__version__)"
    proc = subprocess.run([str(python), "-c", check], capture_output=True, text=True, timeout=120)
    return proc.returncode == 0 and proc.stdout.split() == [VERSION, "1.1.1"]


def _install(python: str, venv: Path) -> None:
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([python, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    # --no-deps: the package pins gunicorn, gevent, paramiko... that serving does not import.
    for args in ([f"{PACKAGE}=={VERSION}", "--no-deps"], list(PINS)):
        proc = subprocess.run(pip + args, capture_output=True, text=True, timeout=1800)
        if proc.returncode != 0:
            shutil.rmtree(venv, ignore_errors=True)
            output = (proc.stdout + proc.stderr).strip()
            if any(text in output for text in OFFLINE_MARKERS):
                raise IndexUnreachable(f"pip install {' '.join(args)}: {output.splitlines()[-1]}")
            raise RuntimeError(f"pip install {' '.join(args)} failed in {venv}:\n{output[-3000:]}")


def failing_handlers(directory: Path) -> Path:
    """inference.py with a predict_fn that raises: a model failure, the same on both sides."""
    path = directory / "failing_inference.py"
    path.write_text(INFERENCE_PY.read_text() + FAILING_PREDICT)
    return path


def real_answers(python: Path) -> dict[str, dict]:
    """Each case's answer from the real worker."""
    with tempfile.TemporaryDirectory(prefix="mlops-worker-") as scratch:
        spec = {
            "handlers": {"inference": str(INFERENCE_PY), "failing": str(failing_handlers(Path(scratch)))},
            "base_dir": str(Path(scratch) / "opt-ml"),
            "features": FEATURES,
            "train_x": TRAIN_X,
            "train_y": TRAIN_Y,
            "cases": [{**c.__dict__, "body": c.body.decode("latin-1")} for c in CASES],
        }
        spec_file = Path(scratch) / "spec.json"
        spec_file.write_text(json.dumps(spec))
        probe = Path(scratch) / "probe.py"
        probe.write_text(PROBE)
        proc = subprocess.run(
            [str(python), str(probe), str(spec_file)], capture_output=True, text=True, timeout=300, cwd=scratch
        )
    if proc.returncode != 0:
        raise RuntimeError(f"the worker probe failed:\n{proc.stderr[-3000:]}")
    answers = json.loads(proc.stdout.strip().splitlines()[-1])
    return {name: {**a, "body": a["body"].encode("latin-1")} for name, a in answers.items()}


# --- the local server, in process ------------------------------------------------------------


def local_answers() -> dict[str, dict]:
    """Each case's answer from the local server (mlops_dagster.serving.app), deployed as usual."""
    with tempfile.TemporaryDirectory(prefix="mlops-local-") as scratch:
        return asyncio.run(_local_answers(Path(scratch)))  # one event loop, as in one server process


async def _local_answers(scratch: Path) -> dict[str, dict]:
    import joblib
    from sklearn.linear_model import LinearRegression

    from mlops_dagster.serving.app import create_app, load_handlers

    archive = _pack(scratch, LinearRegression().fit(TRAIN_X, TRAIN_Y), joblib)
    deploy = {
        "model_data": str(archive),
        "sha256": hashlib.sha256(archive.read_bytes()).hexdigest(),
        "model_package_arn": None,
        "smoke_rows": [[1.0, 2.0]],
    }
    apps = {}
    for name, path in (("inference", INFERENCE_PY), ("failing", failing_handlers(scratch))):
        app = create_app("token", scratch / f"models-{name}", load_handlers(path))
        if name == "failing":  # its deploy smoke test would fail: the model goes live directly
            _go_live(app, archive, deploy["sha256"])
        else:
            answer = await asgi_request(
                app, "POST", "/admin/deploy", {"X-Admin-Token": "token"}, json.dumps(deploy).encode()
            )
            if answer["status"] != 200:
                raise RuntimeError(f"local deploy refused: {answer['body'][:500]!r}")
        apps[name] = app
    return {c.name: await asgi_request(apps[c.handlers], c.method, c.path, c.headers, c.body) for c in CASES}


def _pack(directory: Path, estimator, joblib) -> Path:
    model_dir = directory / "model"
    model_dir.mkdir()
    joblib.dump(estimator, model_dir / "model.joblib")
    (model_dir / "features.json").write_text(json.dumps(FEATURES))
    archive = directory / "model.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for path in sorted(model_dir.iterdir()):
            tar.add(path, arcname=path.name)
    return archive


def _go_live(app, archive: Path, sha256: str) -> None:
    from mlops_dagster.serving.app import LiveModel, extract, utc_now

    ep = app.state.endpoint
    version_dir = ep.model_root / "live"
    version_dir.mkdir(parents=True)
    model = ep.handlers.model_fn(str(extract(archive, version_dir / "model")))
    ep.live = LiveModel(model, sha256, None, str(archive), version_dir, utc_now())


async def asgi_request(app, method: str, path: str, headers: dict, body: bytes = b"") -> dict:
    """One HTTP request through an ASGI app, without a server or a socket."""
    raw_headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    if method == "POST":
        raw_headers.append((b"content-length", str(len(body)).encode()))
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": raw_headers,
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 8080),
    }
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    sent: list[dict] = []

    async def receive() -> dict:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    response_headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in start["headers"]}
    return {
        "status": start["status"],
        "content_type": response_headers.get("content-type"),
        "body": b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body"),
    }


# --- the comparison --------------------------------------------------------------------------


def body_kind(answer: dict) -> str:
    """What a client sees in the body: empty, predictions (csv or json), a JSON error, an HTML page."""
    body, kind = answer["body"], (answer["content_type"] or "").split(";")[0]
    if not body:
        return "empty"
    if kind == "text/html":
        return "html"
    if kind == "text/csv":
        return "csv " + " ".join(f"{float(v):g}" for v in body.decode().split())
    data = json.loads(body)
    if "predictions" in data:
        return "json " + " ".join(f"{v:g}" for v in data["predictions"])
    return "json " + ",".join(sorted(data))


def table(real: dict[str, dict], local: dict[str, dict]) -> str:
    """Markdown: request -> the real worker's answer -> the local server's answer."""
    lines = [
        "| request | real worker: status, Content-Type, body | local server: status, Content-Type, body |",
        "|---|---|---|",
    ]
    for case in CASES:
        cells = [f"{a['status']} `{a['content_type']}` {body_kind(a)}" for a in (real[case.name], local[case.name])]
        lines.append(f"| {case.name} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


def main() -> None:
    logging.getLogger("mlops_dagster.serving").setLevel(logging.CRITICAL)  # the model failure's traceback
    try:
        python = worker_python()
    except IndexUnreachable as exc:
        raise SystemExit(f"cannot install the real worker: {exc}") from None
    print(f"real worker: {PACKAGE} {VERSION}, Flask 1.1.1, in {python.parent.parent}")
    print(table(real_answers(python), local_answers()))


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
