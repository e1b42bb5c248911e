"""The local endpoint answers as the scikit-learn container's serving worker does (issue 11, part 3).

The container (scikit-learn 1.2-1) serves training/inference.py through sagemaker-containers
2.8.6.post2's Worker (Flask 1.1.1). scripts/serving_container.py builds that worker from the
published packages in its own venv (cached under ~/.cache/mlops-dagster; the tests comparing
with it skip if the package index cannot be reached) and sends it and the local server the same
requests. Every answer of the local server is pinned here; the real worker's must equal it, but
for the differences listed in DIFFERENCES (also in the README, "What is still different from
SageMaker").
"""

from __future__ import annotations

import importlib.util
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "serving_container.py"
_spec = importlib.util.spec_from_file_location("serving_container", SCRIPT)
container = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = container  # dataclasses look their module up there
_spec.loader.exec_module(container)

JSON, CSV, HTML = "application/json", "text/csv; charset=utf-8", "text/html; charset=utf-8"
# case -> (status, Content-Type, the predictions (body_kind) or how the body or error message starts)
EXPECTED = {
    "good CSV": (200, CSV, "csv 9 19"),
    "good JSON": (200, JSON, "json 9"),
    "JSON records, Accept */*": (200, JSON, "json 9"),
    "CSV; charset=utf-8 with BOM": (200, JSON, "json 9"),
    "CSV text with BOM": (200, JSON, "json 9"),
    "Accept list with q": (200, CSV, "csv 9"),
    "Accept text/*": (200, CSV, "csv 9"),
    "no Content-Type, JSON body": (200, JSON, "json 9"),
    "no Content-Type, CSV body": (400, JSON, "the body is not valid JSON (Extra data"),
    "wrong Content-Type": (415, JSON, "Content-Type 'text/plain' is not supported; use text/csv or application/json"),
    "wrong Accept": (
        406,
        JSON,
        "Accept image/png offers nothing this endpoint writes; use text/csv or application/json",
    ),
    "short row": (400, JSON, "row 2 has 1 values, expected 2 (a, b)"),
    "non-numeric cell": (400, JSON, "row 1, b: 'x' is not a number"),
    "JSON record lacking a feature": (400, JSON, "row 1 lacks b"),
    "empty body": (400, JSON, "the request has no rows"),
    "model failure": (500, HTML, '<!DOCTYPE HTML PUBLIC "-//W3C//DTD HTML 3.2 Final//EN">'),
    "ping": (200, JSON, '{"status":"ok","capture":null}'),
}
# What the real worker answers differently, and why it is left so.
DIFFERENCES = {
    # /ping: the worker's body is empty. The local one carries the data capture counts
    # (process.capture_status reads them); SageMaker's health check looks at the status only.
    "ping": (200, JSON, ""),
}
GENERIC_500 = "The server encountered an internal error and was unable to complete your request."


def text_of(answer: dict) -> str:
    """The body as the client reads it: an error's message, else the body itself."""
    body = answer["body"].decode()
    if answer["status"] in (400, 406, 415):
        return json.loads(body)["error"]
    return body


@pytest.fixture(scope="module")
def local() -> dict[str, dict]:
    return container.local_answers()


@pytest.fixture(scope="module")
def real() -> dict[str, dict]:
    try:
        python = container.worker_python()
    except container.IndexUnreachable as exc:
        pytest.skip(f"the package index is unreachable, so the real worker cannot be installed: {exc}")
    return container.real_answers(python)


def test_every_case_is_pinned():
    assert {case.name for case in container.CASES} == set(EXPECTED)


@pytest.mark.parametrize("name", list(EXPECTED))
def test_local_answer(local, name):
    status, content_type, start = EXPECTED[name]
    answer = local[name]
    assert (answer["status"], answer["content_type"]) == (status, content_type), answer["body"][:300]
    shown = container.body_kind(answer) if status == 200 and name != "ping" else text_of(answer)
    assert shown.startswith(start)


def test_local_500_names_the_failure_in_the_page(local):
    page = local["model failure"]["body"].decode()
    assert "<title>500 Internal Server Error</title>" in page
    assert "the model failed: RuntimeError: the model failed on purpose" in page


@pytest.mark.parametrize("name", list(EXPECTED))
def test_the_real_worker_answers_the_same(real, local, name):
    mine, theirs = local[name], real[name]
    if name in DIFFERENCES:
        status, content_type, body = DIFFERENCES[name]
        assert (theirs["status"], theirs["content_type"], theirs["body"].decode()) == (status, content_type, body)
        return
    assert (theirs["status"], theirs["content_type"]) == (mine["status"], mine["content_type"]), theirs["body"][:300]
    if mine["status"] == 500:  # the container's page is generic: the reason is only in its log
        assert GENERIC_500 in theirs["body"].decode() and "on purpose" not in theirs["body"].decode()
        return
    if mine["status"] == 200:  # each side fitted the model with its own scikit-learn
        assert container.body_kind(theirs) == container.body_kind(mine)
        return
    assert json.loads(theirs["body"]) == json.loads(mine["body"])  # the same error, row-numbered message included


def test_the_table_lists_both_sides(real, local):
    lines = container.table(real, local).splitlines()
    assert len(lines) == 2 + len(container.CASES)
    assert "| wrong Accept | 406 `application/json` json error | 406 `application/json` json error |" in lines


def test_inside_the_worker_a_refusal_becomes_its_response(tmp_path, monkeypatch):
    """The mechanism, without the real worker (it runs even where the package index is unreachable)."""
    flask = pytest.importorskip("flask")
    from mlops_dagster.serving.app import load_handlers

    handlers = load_handlers()
    monkeypatch.setitem(sys.modules, "sagemaker_containers", types.ModuleType("sagemaker_containers"))
    features = ["a", "b"]
    with flask.Flask("worker").test_request_context("/invocations", method="POST"):
        refused = handlers.input_fn("1,2\n3\n", "text/csv", features)
        assert isinstance(refused, handlers.Refusal)
        response = handlers.output_fn(handlers.predict_fn(refused, model=None), "text/csv")
        assert (response.status_code, response.mimetype) == (400, "application/json")
        assert json.loads(response.get_data()) == {"error": "row 2 has 1 values, expected 2 (a, b)"}
        response = handlers.output_fn(np.array([1.0]), "image/png")
        assert response.status_code == 406 and b"Accept image/png offers nothing" in response.get_data()
        response = handlers.output_fn(handlers.input_fn("x", "text/plain", features), "text/csv")
        assert response.status_code == 415
    with pytest.raises(handlers.InvalidInput, match="row 2 has 1 values"):  # outside a request: raised
        handlers.input_fn("1,2\n3\n", "text/csv", features)


# Run by the container's Python (3.9, scikit-learn 1.2.1, numpy 1.24.1): predict_fn sums a forest's
# trees itself, so its predictions must be that scikit-learn's predict, bit for bit, there too; and a
# large CSV body (numpy's loadtxt) must parse to the numbers float() reads.
FOREST_CHECK = """
import importlib.util, json, sys
import numpy as np
from sklearn.ensemble import ExtraTreesRegressor, RandomForestRegressor
spec = importlib.util.spec_from_file_location("inference", sys.argv[1])
inference = importlib.util.module_from_spec(spec)
spec.loader.exec_module(inference)
rng = np.random.default_rng(7)
X = rng.normal(scale=[1, 10, 100, 1e3, 1e4, 0.01, 1, 5], size=(400, 8))
y = X @ rng.normal(size=8) + rng.normal(size=400)
rows = rng.normal(scale=200, size=(3000, 8))
same = {}
for kind in (RandomForestRegressor, ExtraTreesRegressor):
    forest = kind(n_estimators=20, random_state=3).fit(X, y)
    model = inference.Model(forest, ["x%d" % i for i in range(8)])
    for n in (1, 8, 3000):
        same["%s %d" % (kind.__name__, n)] = inference.predict_fn(rows[:n], model).tobytes() == forest.predict(rows[:n]).tobytes()
values = rng.standard_normal((1000, 8)) * 10.0 ** rng.integers(-300, 300, (1000, 8))
body = "".join(",".join(map(repr, row)) + "\\n" for row in values.tolist())  # numpy's C reader parses it
features = ["x%d" % i for i in range(8)]
parsed = inference.input_fn(body, "text/csv", features)
same["CSV 1000 rows"] = parsed.tobytes() == values.tobytes() == np.array(inference._csv_rows(body, features)).tobytes()
import sklearn
print(json.dumps({"sklearn": sklearn.__version__, "same": same}))
"""


def test_forest_predictions_in_the_containers_scikit_learn_are_its_predict(tmp_path):
    import subprocess

    from mlops_dagster.serving.app import INFERENCE_PY

    try:
        python = container.worker_python()
    except container.IndexUnreachable as exc:
        pytest.skip(f"the package index is unreachable, so the container's scikit-learn cannot be installed: {exc}")
    script = tmp_path / "forest_check.py"
    script.write_text(FOREST_CHECK)
    proc = subprocess.run([str(python), str(script), str(INFERENCE_PY)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert result["sklearn"] == "1.2.1"
    assert result["same"] == dict.fromkeys(result["same"], True) and len(result["same"]) == 7
