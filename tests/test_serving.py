"""Serving: training/inference.py in-process, then a real endpoint server process over HTTP.

Models are tiny random forests trained here, packed like SageMaker packs a model directory
(model.joblib and features.json at the archive root). Every server a test starts is stopped by
its fixture, whatever the test does.
"""

from __future__ import annotations

import ast
import hashlib
import io
import json
import os
import signal
import socket
import sys
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http.client import HTTPResponse
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import psutil
import pytest
from sklearn.ensemble import RandomForestRegressor
from sklearn.linear_model import LinearRegression

from mlops_dagster.datasets import BOSTON_FEATURES, BOSTON_TARGET, synthetic_boston
from mlops_dagster.serving import process
from mlops_dagster.serving.app import INFERENCE_PY, MAX_BODY_BYTES, load_handlers
from mlops_dagster.serving.process import DeployRefused, EndpointRecord

inference = load_handlers()  # training/inference.py, as the endpoint loads it
ROWS = synthetic_boston(40, seed=99)[BOSTON_FEATURES]


@dataclass(frozen=True)
class Artifact:
    path: Path  # model.tar.gz
    sha256: str
    model: object  # the estimator, for in-process predictions

    def predict(self, frame: pd.DataFrame = ROWS) -> list[float]:
        return self.model.predict(frame).tolist()


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def pack(directory: Path, estimator, features: list[str] | None = BOSTON_FEATURES) -> Artifact:
    """model.joblib (+ features.json) in ``directory``, packed as SageMaker does: files at the root."""
    model_dir = directory / "model"
    model_dir.mkdir(parents=True)
    joblib.dump(estimator, model_dir / "model.joblib")
    if features is not None:
        (model_dir / "features.json").write_text(json.dumps(features))
    archive = directory / "model.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for path in sorted(model_dir.iterdir()):
            tar.add(path, arcname=path.name)
    return Artifact(archive, sha256_of(archive), estimator)


def forest(seed: int, **params) -> RandomForestRegressor:
    frame = synthetic_boston(300, seed=seed)
    model = RandomForestRegressor(n_estimators=10, random_state=seed, n_jobs=1, **params)
    return model.fit(frame[BOSTON_FEATURES], frame[BOSTON_TARGET])


def broken_linear(coef) -> LinearRegression:
    """A real scikit-learn model (importable by the server) whose coefficients were tampered with."""
    frame = synthetic_boston(50, seed=3)
    model = LinearRegression().fit(frame[BOSTON_FEATURES], frame[BOSTON_TARGET])
    model.coef_ = np.asarray(coef, dtype=float)
    return model


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> dict[str, Artifact]:
    root = tmp_path_factory.mktemp("artifacts")
    found = {
        "a": pack(root / "a", forest(1)),
        "b": pack(root / "b", forest(2, max_depth=3)),
        "nan": pack(root / "nan", broken_linear([np.nan] * len(BOSTON_FEATURES))),
        "raises": pack(root / "raises", broken_linear([1.0, 2.0])),  # wrong shape: predict raises
    }
    corrupt = root / "corrupt.tar.gz"
    corrupt.write_bytes(b"\x1f\x8b not really gzip" * 100)
    found["corrupt"] = Artifact(corrupt, sha256_of(corrupt), None)
    escape = root / "escape.tar.gz"  # a member that would land outside the extraction directory
    with tarfile.open(escape, "w:gz") as tar:
        data = b"pwned"
        info = tarfile.TarInfo("../escaped.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    found["escape"] = Artifact(escape, sha256_of(escape), None)
    assert found["a"].predict() != found["b"].predict()
    return found


# --- inference.py in-process -----------------------------------------------------------------


@pytest.fixture(scope="module")
def loaded(artifacts):
    return inference.model_fn(str(artifacts["a"].path.parent / "model"))


def csv_body(frame: pd.DataFrame) -> str:
    return "".join(",".join(repr(float(v)) for v in row) + "\n" for row in frame.itertuples(index=False))


def test_inference_py_fits_the_container():
    """The scikit-learn 1.2-1 container: Python 3.9, and numpy, pandas, scikit-learn, joblib only
    (and Flask, the container's server, imported only while answering its worker's request)."""
    tree = ast.parse(INFERENCE_PY.read_text(), feature_version=(3, 9))
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    allowed = set(sys.stdlib_module_names) | {"numpy", "pandas", "sklearn", "joblib", "flask"}
    assert {name.split(".")[0] for name in imported} <= allowed


def test_model_fn_reads_features_and_predicts_like_the_estimator(artifacts, loaded):
    assert loaded.features == BOSTON_FEATURES
    data = inference.input_fn(csv_body(ROWS).encode(), "text/csv", loaded.features)
    assert inference.predict_fn(data, loaded).tolist() == artifacts["a"].predict()


@pytest.mark.parametrize("kind", ["random forest", "extra trees", "forest with feature names"])
def test_predict_fn_on_forests_is_exactly_the_estimators_predict(kind):
    """predict_fn sums the trees itself (without scikit-learn's per-call joblib set-up): the
    predictions must be bit-identical to estimator.predict, on 1 row and many, wide value ranges."""
    from sklearn.ensemble import ExtraTreesRegressor

    rng = np.random.default_rng(7)
    X = rng.normal(scale=[1, 10, 100, 1e3, 1e4, 0.01, 1, 5, 50, 500, 2, 3, 4], size=(300, 13))
    y = X @ rng.normal(size=13) + rng.normal(size=300)
    params = {"n_estimators": 25, "random_state": 3}
    if kind == "extra trees":
        estimator = ExtraTreesRegressor(**params).fit(X, y)
    elif kind == "random forest":
        estimator = RandomForestRegressor(**params).fit(X, y)
    else:
        estimator = RandomForestRegressor(**params).fit(pd.DataFrame(X, columns=BOSTON_FEATURES), y)
    model = inference.Model(estimator, BOSTON_FEATURES)
    rows = rng.normal(scale=200, size=(3000, 13))  # above 1,024 rows the rows are split across threads
    assert inference._is_plain_forest(estimator)
    for batch in (rows[:1], rows[:8], rows):
        expected = estimator.predict(pd.DataFrame(batch, columns=BOSTON_FEATURES) if kind.endswith("names") else batch)
        assert np.array_equal(inference.predict_fn(batch, model), expected)


def test_predict_fn_on_rows_of_the_wrong_width_raises_scikit_learns_error():
    """The trees read columns unchecked, so a matrix of another width goes to the estimator's predict."""
    rng = np.random.default_rng(2)
    forest = RandomForestRegressor(n_estimators=3, random_state=0).fit(rng.random((30, 13)), rng.random(30))
    model = inference.Model(forest, BOSTON_FEATURES)
    with pytest.raises(ValueError, match="X has 12 features, but RandomForestRegressor is expecting 13"):
        inference.predict_fn(rng.random((2, 12)), model)


def test_predict_fn_leaves_other_estimators_to_their_own_predict():
    """Subclasses, multi-output forests and unfitted ones are not summed by hand."""

    class Tweaked(RandomForestRegressor):
        def predict(self, X):
            return super().predict(X) + 1.0

    rng = np.random.default_rng(1)
    X, y = rng.random((50, 13)), rng.random((50, 2))
    tweaked = Tweaked(n_estimators=5, random_state=0).fit(X, y[:, 0])
    two_outputs = RandomForestRegressor(n_estimators=5, random_state=0).fit(X, y)
    assert not inference._is_plain_forest(tweaked)
    assert not inference._is_plain_forest(two_outputs)
    assert not inference._is_plain_forest(RandomForestRegressor())
    model = inference.Model(tweaked, BOSTON_FEATURES)
    assert np.array_equal(inference.predict_fn(X[:4], model), tweaked.predict(X[:4]))


def test_model_fn_falls_back_to_the_estimators_feature_names(tmp_path, artifacts):
    pack(tmp_path, artifacts["a"].model, features=None)
    assert inference.model_fn(str(tmp_path / "model")).features == BOSTON_FEATURES


def test_model_fn_refuses_features_json_that_disagrees_with_the_model(tmp_path, artifacts):
    pack(tmp_path, artifacts["a"].model, features=list(reversed(BOSTON_FEATURES)))
    with pytest.raises(ValueError, match="was fitted on"):
        inference.model_fn(str(tmp_path / "model"))


def test_input_fn_csv_bytes_and_text_without_header(loaded):
    body = csv_body(ROWS.head(3))
    from_bytes = inference.input_fn(body.encode(), "text/csv", loaded.features)
    from_text = inference.input_fn(body, "text/csv; charset=utf-8", loaded.features)
    assert from_bytes.shape == (3, 13) and (from_bytes == from_text).all()
    assert (from_bytes == ROWS.head(3).to_numpy(dtype=float)).all()


def test_bulk_and_row_by_row_parsing_agree(loaded):
    # Quoted cells (as in the Boston CSV's chas) are not taken by the bulk path: same numbers.
    rng = np.random.default_rng(5)
    values = rng.standard_normal((50, 13)) * 10.0 ** rng.integers(-30, 30, (50, 13))
    plain = "".join(",".join(map(repr, row)) + "\n" for row in values.tolist())
    quoted = "".join(",".join(f'"{v!r}"' for v in row) + "\r\n" for row in values.tolist())
    records = json.dumps([dict(zip(BOSTON_FEATURES, map(str, row), strict=True)) for row in values.tolist()])
    for body, kind in ((plain, "text/csv"), (quoted, "text/csv"), (records, "application/json")):
        assert (inference.input_fn(body, kind, loaded.features) == values).all()


@pytest.mark.parametrize("rows", [63, 64, 1000])  # from 64 rows numpy's C reader parses the body
def test_large_csv_bodies_parse_to_the_same_numbers_as_row_by_row(loaded, rows):
    rng = np.random.default_rng(rows)
    values = rng.standard_normal((rows, 13)) * 10.0 ** rng.integers(-300, 300, (rows, 13))
    texts = [",".join(map(repr, row)) for row in values.tolist()]
    texts[rows // 2] = ",".join(f" {v!r} " for v in values[rows // 2].tolist())  # spaces around cells
    body = "\r\n".join(texts) + "\r\n"
    parsed = inference.input_fn(body, "text/csv", loaded.features)
    assert parsed.tobytes() == np.array(inference._csv_rows(body, loaded.features)).tobytes()
    assert parsed.tobytes() == values.tobytes()


@pytest.mark.parametrize(
    "lines, message",
    [
        (lambda t: t[:10] + [""] + t[10:], "row 11 is empty"),  # numpy's reader would skip it
        (lambda t: t[:10] + ["1_0," + t[10].split(",", 1)[1]] + t[11:], None),  # float() takes 1_0
        (lambda t: t[:10] + ['"1",' + t[10].split(",", 1)[1]] + t[11:], None),  # a quoted cell
        (lambda t: t[:10] + [t[10].replace(",", ",1e999,", 1).rsplit(",", 1)[0]] + t[11:], "is not a finite number"),
        (lambda t: t[:10] + ["#" + t[10]] + t[11:], "is not a number"),
        # as many commas in all as 100 rows of 13 need, one too many in row 11 and one too few in row 12
        (lambda t: t[:10] + [t[10] + ",1.0", t[11].rsplit(",", 1)[0]] + t[12:], "row 11 has 14 values"),
        (lambda t: t[:10] + [t[10] + "\r" + t[11]] + t[12:], "row 11: malformed CSV"),  # a lone \r: neither reader's row end
    ],
)
def test_large_csv_bodies_the_c_reader_does_not_take_go_row_by_row(loaded, lines, message):
    rng = np.random.default_rng(0)
    texts = [",".join(map(repr, row)) for row in rng.random((100, 13)).tolist()]
    body = "\n".join(lines(texts)) + "\n"
    if message is None:
        assert inference.input_fn(body, "text/csv", loaded.features).tolist() == inference._csv_rows(
            body, loaded.features
        )
    else:
        with pytest.raises(inference.InvalidInput, match=message):
            inference.input_fn(body, "text/csv", loaded.features)


def test_input_fn_json_instances_and_records(loaded):
    expected = ROWS.head(2).to_numpy(dtype=float)
    lists = {"instances": ROWS.head(2).to_numpy().tolist()}
    records = ROWS.head(2).to_dict(orient="records")
    shuffled = [dict(reversed(list(r.items()))) for r in records]  # key order does not matter
    for body in (lists, records, {"instances": shuffled}):
        assert (inference.input_fn(json.dumps(body), "application/json", loaded.features) == expected).all()


def test_input_fn_without_features_uses_the_model_fn_model(loaded):
    # The SageMaker container calls input_fn(body, content_type) after model_fn.
    assert inference.input_fn(csv_body(ROWS.head(1)), "text/csv").shape == (1, 13)


@pytest.mark.parametrize(
    "body, content_type, message",
    [
        (
            "1,2,3\n",
            "text/csv",
            "row 1 has 3 values, expected 13 (crim, zn, indus, chas, nox, rm, age, dis, rad, tax, ptratio, b, lstat)",
        ),
        ("ROW\nROW\n" + "1," * 11 + "1\n", "text/csv", "row 3 has 12 values, expected 13 (crim, zn, "),
        ("ROW\nROW\nROW\n" + "1,2,3,0,0.5,abc" + ",1" * 7 + "\n", "text/csv", "row 4, rm: 'abc' is not a number"),
        (
            ",".join(BOSTON_FEATURES) + "\nROW\n",
            "text/csv",
            "row 1, crim: 'crim' is not a number (send rows without a header)",
        ),
        ("ROW\n1,nan" + ",1" * 11 + "\n", "text/csv", "row 2, zn: 'nan' is not a finite number"),
        ("ROW\n\nROW\n", "text/csv", "row 2 is empty"),
        ("ROW\n" + "1,," + "1," * 10 + "1\n", "text/csv", "row 2, zn: the value is empty"),
        ("", "text/csv", "the request has no rows"),
        ('{"instances": [[1, 2]]}', "application/json", "row 1 has 2 values, expected 13 (crim, zn, "),
        ('{"instances": [{"crim": 1}]}', "application/json", "row 1 lacks zn, indus, chas"),
        ('{"rows": []}', "application/json", 'needs an "instances" list'),
        ('{"instances": [1, 2, 3]}', "application/json", "row 1 is 1, not a list of 13 numbers"),
        ("[[1, 2", "application/json", "the body is not valid JSON"),
        ("[[1, true, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]]", "application/json", "row 1, zn: expected a number, got true"),
        ("[[1, null, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]]", "application/json", "row 1, zn: expected a number, got null"),
        ("[[1, 1" + "0" * 400 + ", 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]]", "application/json", "row 1, zn: 100"),
    ],
)
def test_input_fn_names_the_row_and_the_reason(loaded, body, content_type, message):
    body = body.replace("ROW", ",".join(["1"] * 13))
    with pytest.raises(inference.InvalidInput) as raised:
        inference.input_fn(body, content_type, loaded.features)
    assert message in str(raised.value)
    assert isinstance(raised.value, ValueError)


def test_json_records_with_unknown_fields_and_non_numbers(loaded):
    record = dict.fromkeys(BOSTON_FEATURES, 1.0)
    with pytest.raises(inference.InvalidInput, match="row 2 has unknown fields price"):
        inference.input_fn(json.dumps([record, {**record, "price": 3}]), "application/json", loaded.features)
    with pytest.raises(inference.InvalidInput, match="row 1, chas: expected a number, got true"):
        inference.input_fn(json.dumps([{**record, "chas": True}]), "application/json", loaded.features)


def test_unsupported_media_types_have_their_own_exceptions(loaded):
    with pytest.raises(inference.UnsupportedContentType) as raised:
        inference.input_fn("x", "text/plain", loaded.features)
    assert not isinstance(raised.value, ValueError)  # not mistaken for a bad row
    with pytest.raises(inference.UnsupportedAccept):
        inference.output_fn(np.array([1.0]), "text/html")
    statuses = {error.__name__: error.status for error in inference.REFUSALS}
    assert statuses == {"InvalidInput": 400, "UnsupportedContentType": 415, "UnsupportedAccept": 406}


def test_inference_py_runs_without_flask_or_sagemaker_containers(loaded, monkeypatch):
    """Outside the container's worker a refusal is raised, even where Flask is importable."""
    monkeypatch.setitem(sys.modules, "flask", None)  # import flask fails
    monkeypatch.setitem(sys.modules, "sagemaker_containers", object())
    with pytest.raises(inference.InvalidInput, match="the request has no rows"):
        inference.input_fn("", "text/csv", loaded.features)
    monkeypatch.delitem(sys.modules, "sagemaker_containers")
    with pytest.raises(inference.UnsupportedAccept, match="Accept image/png offers nothing"):
        inference.output_fn(np.array([1.0]), "image/png")


@pytest.mark.parametrize(
    "default, accept, returned",
    [
        ("text/csv", None, "text/csv"),
        ("text/csv", "*/*", "text/csv"),
        ("text/plain", None, None),
        (None, "", "application/json"),
    ],
)
def test_negotiate_follows_the_containers_default_accept(monkeypatch, default, accept, returned):
    if default is None:
        monkeypatch.delenv("SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT", raising=False)
    else:
        monkeypatch.setenv("SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT", default)
    assert inference.negotiate(accept) == returned


def test_text_bodies_lose_a_byte_order_mark_as_bytes_do(loaded):
    row = ",".join(["1"] * len(loaded.features))
    from_text = inference.input_fn("\ufeff" + row, "text/csv", loaded.features)
    from_bytes = inference.input_fn(("\ufeff" + row).encode(), "text/csv", loaded.features)
    assert from_text.tolist() == from_bytes.tolist() == [[1.0] * len(loaded.features)]


def test_output_fn_csv_lines_and_json(artifacts):
    predictions = np.array(artifacts["a"].predict()[:3])
    text, kind = inference.output_fn(predictions, "text/csv")
    assert kind == "text/csv" and [float(line) for line in text.splitlines()] == predictions.tolist()
    text, kind = inference.output_fn(predictions, "application/json")
    assert kind == "application/json" and json.loads(text) == {"predictions": predictions.tolist()}
    assert json.loads(inference.output_fn(np.array([np.nan]), "application/json")[0]) == {"predictions": [None]}
    for values in ([0.1, 1e-300, -2.5e300, 22.700000000000003], [[1.5, 2.0]], []):  # 1-D floats have a fast path
        lines = [",".join(map(repr, v)) if isinstance(v, list) else repr(v) for v in values]
        assert inference.output_fn(np.array(values), "text/csv") == ("".join(x + "\n" for x in lines), "text/csv")


# --- a real server ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("mlops-home")


def stop_all(home: Path, env: str, started_before: set[int]) -> None:
    """Stop the environment's server, then anything else this test started (a leaked process fails nothing
    but the next run)."""
    process.stop_endpoint(home, env)
    for pid, proc in list(process._children.items()):
        if pid not in started_before and proc.poll() is None:
            proc.kill()
            proc.wait(10)


@pytest.fixture(scope="module")
def live_a(home, artifacts):
    """A server with model A live (shared: the tests that use it must leave A live)."""
    before = set(process._children)
    try:
        record = process.start_endpoint(home, "shared")
        process.deploy(
            record, artifacts["a"].path, artifacts["a"].sha256, "arn:model-package/a/1", ROWS.head(2).to_numpy()
        )
        yield process.read_endpoint(home, "shared")
    finally:
        stop_all(home, "shared", before)


@pytest.fixture
def fresh(tmp_path):
    """A home for a server of the test's own; whatever the test starts there is stopped."""
    before = set(process._children)
    home = tmp_path / "home"
    home.mkdir()
    try:
        yield home
    finally:
        stop_all(home, "dev", before)


def predictions(result: process.InvokeResult) -> list[float]:
    assert result.status == 200, result.body
    if result.content_type.startswith("text/csv"):
        return [float(line) for line in result.body.decode().splitlines()]
    return json.loads(result.body)["predictions"]


def invoke_csv(record: EndpointRecord, frame: pd.DataFrame = ROWS, accept: str | None = None):
    return process.invoke(record, csv_body(frame).encode(), "text/csv", accept)


def error_of(result: process.InvokeResult) -> str:
    return json.loads(result.body)["error"]


def test_csv_and_json_invocations_match_in_process_predictions(live_a, artifacts):
    expected = artifacts["a"].predict()
    assert predictions(invoke_csv(live_a, accept="text/csv")) == expected
    body = json.dumps({"instances": ROWS.to_numpy().tolist()}).encode()
    assert predictions(process.invoke(live_a, body, "application/json")) == expected
    records = json.dumps(ROWS.to_dict(orient="records")).encode()
    assert predictions(process.invoke(live_a, records, "application/json; charset=utf-8", "text/csv")) == expected


@pytest.mark.parametrize(
    "accept, returned",
    [
        (None, "application/json"),  # as SageMaker's containers: SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT
        ("*/*", "application/json"),
        ("text/csv", "text/csv"),
        ("application/json", "application/json"),
        ("text/*", "text/csv"),
        ("text/html, application/json;q=0.5, text/csv;q=0.9", "text/csv"),
        ("text/csv;q=0.2, application/*", "application/json"),
    ],
)
def test_accept_negotiation(live_a, artifacts, accept, returned):
    result = invoke_csv(live_a, ROWS.head(3), accept)
    assert result.content_type.split(";")[0] == returned
    assert predictions(result) == artifacts["a"].predict(ROWS.head(3))


@pytest.mark.parametrize("accept", ["image/png", "text/html, application/xml", "text/csv;q=0"])
def test_unsupported_accept_is_406(live_a, accept):
    result = invoke_csv(live_a, ROWS.head(1), accept)
    assert result.status == 406 and "Accept" in error_of(result)


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-npy"])
def test_unsupported_content_type_is_415(live_a, content_type):
    result = process.invoke(live_a, csv_body(ROWS.head(1)).encode(), content_type)
    assert result.status == 415 and "text/csv or application/json" in error_of(result)


def test_an_empty_content_type_is_json_as_in_the_container(live_a, artifacts):
    result = process.invoke(live_a, csv_body(ROWS.head(1)).encode(), "")
    assert result.status == 400 and error_of(result).startswith("the body is not valid JSON")
    body = json.dumps({"instances": ROWS.head(2).to_numpy().tolist()}).encode()
    assert predictions(process.invoke(live_a, body, "")) == artifacts["a"].predict(ROWS.head(2))


def test_malformed_rows_are_400_naming_the_row(live_a):
    lines = csv_body(ROWS.head(4)).splitlines()
    lines[2] = lines[2].replace(",", ",oops,", 1)
    result = process.invoke(live_a, "\n".join(lines).encode(), "text/csv")
    assert result.status == 400
    assert error_of(result).startswith("row 3 has 14 values, expected 13 (crim, zn, indus")
    result = process.invoke(live_a, b'[{"crim": 1}]', "application/json")
    assert result.status == 400 and error_of(result).startswith("row 1 lacks zn")


def raw_request(record: EndpointRecord, head: bytes, body_chunks=()) -> HTTPResponse:
    """Send a hand-made request (headers, then body chunks) and read the response."""
    sock = socket.create_connection(("127.0.0.1", record.port), timeout=30)
    try:
        sock.sendall(head)
        for chunk in body_chunks:
            sock.sendall(chunk)
        response = HTTPResponse(sock)
        response.begin()
        response.body = response.read()
        return response
    finally:
        sock.close()


def test_body_above_6_mb_is_413_by_content_length(live_a):
    # Only the headers are sent: the server must answer from Content-Length, without the body.
    head = (
        f"POST /invocations HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/csv\r\n"
        f"Content-Length: {MAX_BODY_BYTES + 1}\r\n\r\n"
    ).encode()
    response = raw_request(live_a, head)
    assert response.status == 413 and b"above the limit" in response.body


def test_chunked_body_above_6_mb_is_413_without_content_length(live_a, artifacts):
    head = (
        b"POST /invocations HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/csv\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    piece = b"1" * (256 * 1024)
    chunks = [b"%x\r\n%s\r\n" % (len(piece), piece)] * (MAX_BODY_BYTES // len(piece)) + [b"1\r\n1\r\n"]
    response = raw_request(live_a, head, chunks)  # 6 MB + 1 byte, and no end of the body
    assert response.status == 413 and b"above the limit" in response.body
    row = csv_body(ROWS.head(1)).encode()  # the same framing under the limit is served
    response = raw_request(live_a, head, [b"%x\r\n%s\r\n" % (len(row), row), b"0\r\n\r\n"])
    assert response.status == 200 and json.loads(response.body)["predictions"] == artifacts["a"].predict(ROWS.head(1))


def test_body_of_exactly_6_mb_is_accepted(live_a, artifacts):
    body = json.dumps({"instances": ROWS.head(1).to_numpy().tolist()}).encode()
    body += b" " * (MAX_BODY_BYTES - len(body))
    assert predictions(process.invoke(live_a, body, "application/json")) == artifacts["a"].predict(ROWS.head(1))


def test_concurrent_requests_get_their_own_answers(live_a, artifacts):
    expected = artifacts["a"].predict()

    def one(i: int) -> tuple[int, list[float]]:
        rows = ROWS.iloc[[i % len(ROWS), (i * 7) % len(ROWS)]]
        return i, predictions(invoke_csv(live_a, rows))

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(one, range(32)))
    assert len(results) == 32
    for i, got in results:
        assert got == [expected[i % len(ROWS)], expected[(i * 7) % len(ROWS)]]


def test_admin_routes_need_the_token(live_a):
    for method, path in (("GET", "/admin/status"), ("POST", "/admin/deploy")):
        status, _, _ = process._request(live_a, method, path, b"{}")
        assert status == 401
        status, _, _ = process._request(live_a, method, path, b"{}", {"X-Admin-Token": "guess"})
        assert status == 403
    status = process.endpoint_status(live_a)
    assert status["live"]["model_package_arn"] == "arn:model-package/a/1" and status["requests_total"] > 0


@pytest.mark.parametrize(
    "name, sha256, reason",
    [
        ("corrupt", None, "cannot extract model.tar.gz"),
        ("escape", None, "which is outside the destination"),
        ("b", "0" * 64, "sha256 mismatch"),
        ("nan", None, "smoke test: the predictions for rows [1, 2] are not finite numbers"),
        ("raises", None, "smoke test: predict failed"),
        ("missing", "1" * 64, "cannot read model_data"),
        ("/dev/zero", "1" * 64, "is not a regular file"),
    ],
)
def test_a_refused_deploy_leaves_the_live_model_serving(live_a, artifacts, name, sha256, reason):
    # "missing" names no file; "/dev/zero" (absolute) replaces the directory it is joined to
    candidate = artifacts.get(name) or Artifact(artifacts["a"].path.parent / name, "1" * 64, None)
    with pytest.raises(DeployRefused) as refused:
        process.deploy(live_a, candidate.path, sha256 or candidate.sha256, f"arn:{name}", ROWS.head(2).to_numpy())
    assert reason in refused.value.reason
    assert predictions(invoke_csv(live_a)) == artifacts["a"].predict()
    assert process.endpoint_status(live_a)["live"]["sha256"] == artifacts["a"].sha256
    assert process.read_endpoint(Path(live_a.home), "shared").sha256 == artifacts["a"].sha256
    models = Path(live_a.home) / "endpoints" / "shared" / "models"
    assert len(list(models.iterdir())) == 1  # the refused candidate's directory is gone


def test_smoke_rows_must_fit_the_candidate(live_a, artifacts):
    with pytest.raises(DeployRefused, match="smoke rows do not fit the candidate model: row 1 has 2 values"):
        process.deploy(live_a, artifacts["b"].path, artifacts["b"].sha256, "arn:b", [[1.0, 2.0]])


def test_blue_green_switch_redeploy_and_stop(fresh, artifacts):
    record = process.start_endpoint(fresh, "dev")
    assert process._ping(record.port) == 503  # up, no model
    assert invoke_csv(record).status == 503
    answer = process.deploy(record, artifacts["a"].path, artifacts["a"].sha256, "arn:a", ROWS.head(3).to_numpy())
    assert answer["changed"] is True and answer["previous"] is None
    assert process._ping(record.port) == 200
    assert predictions(invoke_csv(record)) == artifacts["a"].predict()

    answer = process.deploy(record, artifacts["b"].path, artifacts["b"].sha256, "arn:b", ROWS.head(3))  # as records
    assert answer["changed"] is True and answer["previous"]["sha256"] == artifacts["a"].sha256
    assert predictions(invoke_csv(record)) == artifacts["b"].predict()
    saved = process.read_endpoint(fresh, "dev")
    assert (saved.sha256, saved.model_package_arn) == (artifacts["b"].sha256, "arn:b")
    assert saved.token == record.token and oct(process.record_path(fresh, "dev").stat().st_mode & 0o777) == "0o600"
    assert record.token not in repr(saved) and "token" not in saved.public_dict()

    again = process.deploy(record, artifacts["b"].path, artifacts["b"].sha256, "arn:b", ROWS.head(3).to_numpy())
    assert again["changed"] is False and again["live"]["sha256"] == artifacts["b"].sha256

    assert process.stop_endpoint(fresh, "dev") is True
    assert not psutil.pid_exists(record.pid)
    assert not process.record_path(fresh, "dev").exists() and process.read_endpoint(fresh, "dev") is None
    assert process.stop_endpoint(fresh, "dev") is False  # nothing left to stop


def test_a_killed_server_is_detected_and_replaced(fresh):
    record = process.start_endpoint(fresh, "dev")
    reused = process.ensure_endpoint(fresh, "dev")
    assert (reused.started, reused.record.pid) == (False, record.pid)
    with pytest.raises(process.EndpointError, match="already running"):
        process.start_endpoint(fresh, "dev")

    os.kill(record.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while process.is_alive(record) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not process.is_alive(record)

    result = process.ensure_endpoint(fresh, "dev")
    assert result.started and result.replaced.pid == record.pid
    assert "was not running any more" in result.message
    assert result.record.pid != record.pid and process.is_alive(result.record)
    assert process.read_endpoint(fresh, "dev") == result.record
    assert process._ping(result.record.port) == 503  # a new server starts without a model


def test_environment_names_are_checked(tmp_path):
    with pytest.raises(ValueError, match="endpoint environment"):
        process.read_endpoint(tmp_path, "../prod")
