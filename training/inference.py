"""Serving handlers for the SageMaker scikit-learn container, also used by the local endpoint.

The container (scikit-learn 1.2-1, Python 3.9) calls, in this order:
    model_fn(model_dir)                      once per worker, on the extracted model.tar.gz
    input_fn(request_body, content_type)     per request
    predict_fn(data, model)
    output_fn(prediction, accept)            returns (body, content type)
The local endpoint (mlops_dagster/serving/app.py) loads this same file by path.

Requests carry rows of the features in training order (features.json, written by train.py),
as `text/csv` (no header) or `application/json`: {"instances": [[...], ...]},
{"instances": [{"crim": ..., ...}]} or a list of records [{"crim": ..., ...}, ...]. Values are
numbers (JSON numbers or numeric text). A bad row raises InvalidInput (a ValueError) naming
the row, counted from 1, and the reason; so does a body nested too deeply to parse.

Statuses, the same locally and on AWS (decided here, so that a client that works against a local
endpoint works against the real one). Each refusal carries its HTTP status: InvalidInput 400,
UnsupportedContentType 415, UnsupportedAccept 406, and the answer is JSON {"error": message}.
The local server (app.py) maps the exceptions to those answers. In the container, the
sagemaker-containers 2.8.6 worker wraps any exception a handler raises in its ClientError and
Flask answers 500 with a generic HTML page (checked against the real worker:
tests/test_serving_container.py). So while answering that worker's request (a Flask request
context, sagemaker_containers loaded) input_fn returns the refusal instead of raising it,
predict_fn passes it on, and output_fn turns it into a Flask response with its status: the
worker returns a response from output_fn as it is. Anything else (a model failure) is 500 on both.
Accept is negotiated here too (lists, q-values, text/* and */*), since the worker hands the
header over as sent; it maps only a missing header or exactly */* to
SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT (default application/json).

Standard library, numpy, pandas, scikit-learn and joblib only (Flask, which the container serves
with, is imported only when answering its worker); no syntax newer than 3.9.
"""

import csv
import io
import json
import math
import os
import sys
from concurrent.futures import ThreadPoolExecutor

import joblib
import numpy as np
import pandas as pd

CSV = "text/csv"
JSON = "application/json"
MEDIA_TYPES = (CSV, JSON)

# The container calls input_fn without the model, so model_fn leaves the feature names of the
# model it loaded here (one model per container worker). The local endpoint, which holds two
# models during a blue/green switch, passes the live model's features to input_fn instead.
_loaded_features = None


class InvalidInput(ValueError):
    """The request body cannot be turned into rows of features (the client's mistake)."""

    status = 400


class UnsupportedContentType(Exception):
    """The request's Content-Type is neither text/csv nor application/json."""

    status = 415


class UnsupportedAccept(Exception):
    """The response cannot be written in the requested media type."""

    status = 406


REFUSALS = (InvalidInput, UnsupportedContentType, UnsupportedAccept)


class Refusal:
    """A refused request on its way from input_fn to output_fn in the container (see the top)."""

    def __init__(self, error):
        self.status = error.status
        self.message = str(error)


def _worker_request():
    """True while answering a request of the container's sagemaker-containers (Flask) worker."""
    if "sagemaker_containers" not in sys.modules:
        return False
    try:
        import flask
    except ImportError:
        return False
    return flask.has_request_context()


def _refusal_response(refusal):
    import flask

    body = json.dumps({"error": refusal.message})
    return flask.Response(body, status=refusal.status, mimetype=JSON)


class Model:
    """What model_fn returns: the estimator and its feature names in training order."""

    def __init__(self, estimator, features):
        self.estimator = estimator
        self.features = list(features)


def media_type(header):
    """'text/csv; charset=utf-8' -> 'text/csv'."""
    return (header or "").split(";", 1)[0].strip().lower()


# --- model_fn -------------------------------------------------------------------------------


def model_fn(model_dir):
    """Load model.joblib and its feature order (features.json, else the estimator's own names)."""
    global _loaded_features
    path = os.path.join(model_dir, "model.joblib")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: model.joblib not found in the model directory")
    estimator = joblib.load(path)
    if not callable(getattr(estimator, "predict", None)):
        raise TypeError(f"{path} holds a {type(estimator).__name__}, which has no predict()")
    # One request is one call: parallel trees cost more in thread start-up than they save
    # (measured: 67 ms vs 22 ms for one row, 100 trees); requests already run in parallel.
    if getattr(estimator, "n_jobs", None) not in (None, 1):
        estimator.n_jobs = 1
    model = Model(estimator, _features(model_dir, estimator))
    _loaded_features = model.features
    return model


def _features(model_dir, estimator):
    fitted = getattr(estimator, "feature_names_in_", None)
    path = os.path.join(model_dir, "features.json")
    if os.path.isfile(path):
        with open(path) as f:
            features = json.load(f)
        if not isinstance(features, list) or not features or not all(isinstance(n, str) for n in features):
            raise ValueError(f"{path}: expected a non-empty list of feature names")
        if fitted is not None and list(fitted) != features:
            raise ValueError(f"{path} lists {features}, but the model was fitted on {list(fitted)}")
    elif fitted is not None:
        features = [str(n) for n in fitted]
    elif hasattr(estimator, "n_features_in_"):
        features = [f"x{i + 1}" for i in range(estimator.n_features_in_)]
    else:
        raise ValueError(f"{model_dir}: no features.json, and the model records no feature names")
    expected = getattr(estimator, "n_features_in_", len(features))
    if expected != len(features):
        raise ValueError(f"{path} lists {len(features)} features, the model expects {expected}")
    return features


# --- input_fn -------------------------------------------------------------------------------


def input_fn(request_body, request_content_type, features=None):
    """Parse a CSV or JSON body into a float matrix, one column per feature in training order."""
    try:
        return _parse(request_body, request_content_type, features)
    except (InvalidInput, UnsupportedContentType) as exc:
        if _worker_request():
            return Refusal(exc)
        raise


def _parse(request_body, request_content_type, features):
    features = features if features is not None else _loaded_features
    if features is None:
        raise RuntimeError("no feature names: load a model with model_fn first, or pass features")
    kind = media_type(request_content_type)
    if kind not in MEDIA_TYPES:
        raise UnsupportedContentType(
            f"Content-Type {request_content_type!r} is not supported; use text/csv or application/json"
        )
    text = _text(request_body)
    if kind == CSV:
        matrix = _fast_csv(text, len(features))
        return matrix if matrix is not None else _matrix(_csv_rows(text, features))
    try:
        data = _json_instances(text)
        matrix = _fast_json(data, features)
        if matrix is None:
            matrix = _matrix([_json_row(n, item, features) for n, item in enumerate(data, 1)])
    except RecursionError:  # json.loads, or json.dumps of a value in a message: the body's depth
        raise InvalidInput(_TOO_DEEP) from None
    return matrix


_TOO_DEEP = (
    "the JSON body is nested too deeply to parse; send rows as lists of numbers "
    '({"instances": [[...], ...]}) or as records ([{"crim": ...}, ...])'
)


# Well-formed bodies are parsed in bulk (1,000 rows: ~5 ms instead of ~23 ms); anything the bulk
# path does not take goes row by row, which finds the first bad row and says what is wrong.


def _fast_csv(text, width):
    body = text.rstrip()
    if not body:
        return None
    # The rows are the lines, as splitlines() has them; counting \n is 2x faster when no \r can end one.
    rows = len(body.splitlines()) if "\r" in body else body.count("\n") + 1
    if rows >= _LOADTXT_ROWS:
        return _loadtxt_csv(body, rows, width)
    lines = body.splitlines()
    if any(line.count(",") != width - 1 for line in lines):
        return None
    try:
        values = np.array(",".join(lines).split(","), dtype=float)  # Python's float parsing: exact
    except ValueError:
        return None  # quoted, empty or non-numeric cells
    return values.reshape(len(lines), width) if np.isfinite(values).all() else None


# From this many rows numpy's C reader parses a body (1,000 rows: ~1.5 ms instead of ~4.3 ms). It
# converts a cell as float() does (CPython's PyOS_string_to_double), so the values are the same;
# anything it reads otherwise (a skipped blank line, quotes, underscores) fails or changes the shape,
# and goes row by row. It checks that every row has as many cells as the first (else it fails) and
# the shape is checked here, so the rows need not be split and counted one by one first.
_LOADTXT_ROWS = 64


def _loadtxt_csv(text, rows, width):
    try:
        matrix = np.loadtxt(io.StringIO(text), delimiter=",", dtype=float, comments=None, ndmin=2)
    except ValueError:
        return None
    return matrix if matrix.shape == (rows, width) and np.isfinite(matrix).all() else None


def _fast_json(data, features):
    rows = []
    for item in data:
        if isinstance(item, dict):
            if len(item) != len(features) or not all(name in item for name in features):
                return None
            item = [item[name] for name in features]
        if not isinstance(item, list) or any(type(v) is bool for v in item):  # numpy would take True as 1.0
            return None
        rows.append(item)
    try:
        matrix = np.array(rows, dtype=float)
    except (ValueError, TypeError, OverflowError):
        return None
    ok = matrix.ndim == 2 and matrix.shape[1] == len(features) and np.isfinite(matrix).all()
    return matrix if ok else None


def _matrix(rows):
    if not rows:
        raise InvalidInput("the request has no rows")
    return np.array(rows, dtype=float)


def _text(body):
    if isinstance(body, (bytes, bytearray, memoryview)):
        try:
            return bytes(body).decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise InvalidInput(f"the body is not UTF-8 text ({exc})") from None
    if isinstance(body, str):  # the worker decodes text/csv and application/json, keeping a BOM
        return body[1:] if body.startswith("\ufeff") else body
    raise InvalidInput(f"the body must be bytes or text, not {type(body).__name__}")


def _csv_rows(text, features):
    rows = []
    reader = csv.reader(io.StringIO(text.rstrip()))  # a trailing newline is not an empty row
    try:
        for number, cells in enumerate(reader, start=1):
            if not cells:
                raise InvalidInput(f"row {number} is empty")
            _check_width(number, cells, features)
            rows.append([_number(number, name, cell.strip()) for name, cell in zip(features, cells)])
    except csv.Error as exc:
        raise InvalidInput(f"row {reader.line_num}: malformed CSV ({exc})") from None
    return rows


def _json_instances(text):
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise InvalidInput(f"the body is not valid JSON ({exc})") from None
    if isinstance(data, dict):
        if "instances" not in data:
            raise InvalidInput('a JSON object body needs an "instances" list')
        data = data["instances"]
    if not isinstance(data, list):
        raise InvalidInput('expected {"instances": [...]} or a list of records')
    return data


def _json_row(number, item, features):
    if isinstance(item, dict):
        missing = [name for name in features if name not in item]
        if missing:
            raise InvalidInput(f"row {number} lacks {', '.join(missing)}")
        unknown = sorted(str(key) for key in item if key not in features)
        if unknown:
            raise InvalidInput(f"row {number} has unknown fields {', '.join(unknown)} (expected {', '.join(features)})")
        item = [item[name] for name in features]
    elif isinstance(item, list):
        _check_width(number, item, features)
    else:
        raise InvalidInput(
            f"row {number} is {_shown(item)}, not a list of {len(features)} numbers or an object "
            "keyed by feature name (wrap a single row in a list: [[...]])"
        )
    return [_number(number, name, value) for name, value in zip(features, item)]


def _check_width(number, values, features):
    if len(values) != len(features):
        raise InvalidInput(f"row {number} has {len(values)} values, expected {len(features)} ({', '.join(features)})")


def _shown(value, limit=40):
    """A value as JSON for a message, cut to ``limit`` characters (a row may hold megabytes)."""
    text = json.dumps(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _number(number, name, value):
    """A finite float from a CSV cell or a JSON value (a number or numeric text; not a bool)."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise InvalidInput(f"row {number}, {name}: expected a number, got {_shown(value)}")
    if value == "":
        raise InvalidInput(f"row {number}, {name}: the value is empty")
    shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
    try:
        result = float(value)
    except ValueError:
        hint = " (send rows without a header)" if number == 1 and value == name else ""
        raise InvalidInput(f"row {number}, {name}: {shown} is not a number{hint}") from None
    except OverflowError:  # an integer too large for a float
        result = math.inf
    if not math.isfinite(result):
        raise InvalidInput(f"row {number}, {name}: {shown} is not a finite number")
    return result


# --- predict_fn and output_fn ---------------------------------------------------------------


def predict_fn(data, model):
    """Predict with the feature names the estimator was fitted with (no scikit-learn warning)."""
    if isinstance(data, Refusal):
        return data
    trees = _forest_trees(model)
    if trees is not None:
        return _forest_predict(model.estimator, trees, data)
    X = data
    if getattr(model.estimator, "feature_names_in_", None) is not None:
        X = pd.DataFrame(data, columns=model.features)
    return np.asarray(model.estimator.predict(X))


def _is_plain_forest(estimator):
    """A fitted single-output RandomForestRegressor/ExtraTreesRegressor, not a subclass."""
    from sklearn.ensemble import ExtraTreesRegressor, RandomForestRegressor

    return (
        type(estimator) in (RandomForestRegressor, ExtraTreesRegressor)
        and getattr(estimator, "n_outputs_", None) == 1
        and bool(getattr(estimator, "estimators_", None))
    )


def _forest_trees(model):
    """A plain forest's trees as (Tree.apply, leaf values), in estimator order; None for any other
    estimator. Worked out on the first predict and kept on the Model (views: nothing is copied)."""
    cached = getattr(model, "_trees", None)
    if cached is not None and cached[0] is model.estimator:
        return cached[1]
    trees = None
    if _is_plain_forest(model.estimator):
        trees = [(e.tree_.apply, e.tree_.value.ravel()) for e in model.estimator.estimators_]
    model._trees = (model.estimator, trees)
    return trees


def _forest_predict(forest, trees, data):
    """forest.predict(data) without its per-call joblib set-up and its per-tree checks, which cost
    more than the trees on a few rows (100 trees, 8 rows: about 15x). The same arithmetic as
    scikit-learn's (1.2 to 1.9): rows as float32, each tree's prediction (its Tree.predict: the
    values of the leaves Tree.apply finds, what DecisionTreeRegressor.predict returns after its
    checks) added in estimator order into float64, divided by the number of trees, so the
    predictions are identical (tests/test_serving.py and tests/test_serving_container.py check)."""
    X = np.ascontiguousarray(data, dtype=np.float32)
    if X.ndim != 2 or X.shape[1] != forest.n_features_in_:
        return forest.predict(data)  # the trees below read columns unchecked: scikit-learn's error
    parts = min(os.cpu_count() or 1, X.shape[0] // _ROWS_PER_THREAD)
    if parts <= 1:
        return _sum_trees(trees, X)
    # Many rows: slices of rows on one thread per core (Tree.apply releases the GIL). Each row's
    # sum is still taken tree by tree in the same order, so nothing changes but the time.
    with ThreadPoolExecutor(parts) as pool:
        return np.concatenate(list(pool.map(lambda rows: _sum_trees(trees, rows), np.array_split(X, parts))))


_ROWS_PER_THREAD = 512


def _sum_trees(trees, X):
    """The trees' mean on float32 rows of the right width."""
    total = np.zeros(X.shape[0], dtype=np.float64)
    for apply, values in trees:
        total += values[apply(X)]
    total /= len(trees)
    return total


def output_fn(prediction, accept):
    """text/csv: one prediction per line; application/json: {"predictions": [...]}."""
    if isinstance(prediction, Refusal):
        return _refusal_response(prediction)
    kind = negotiate(accept)
    if kind is None:
        refused = UnsupportedAccept(
            f"Accept {accept} offers nothing this endpoint writes; use text/csv or application/json"
        )
        if _worker_request():
            return _refusal_response(Refusal(refused))
        raise refused
    array = np.asarray(prediction)
    if kind == CSV and array.ndim == 1 and array.dtype == np.float64 and array.size:
        return "\n".join(map(repr, array.tolist())) + "\n", CSV  # one float per line, as below, faster
    values = array.tolist()
    if kind == CSV:
        lines = (",".join(map(_cell, v)) if isinstance(v, list) else _cell(v) for v in values)
        return "".join(line + "\n" for line in lines), CSV
    return json.dumps({"predictions": _finite_or_none(values)}), JSON


_WILDCARDS = {"text/*": CSV, "application/*": JSON}


def negotiate(accept):
    """The response type for an Accept header, or None when nothing offered is written here.

    Of a list, the supported type with the highest q wins (the first on a tie); text/* means
    text/csv, application/* application/json, */* (and no header) the default of
    SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT, as the container's worker has it.
    """
    default = os.environ.get("SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT") or JSON
    default = default if default in MEDIA_TYPES else None  # a default written nowhere: 406
    if accept is None or not accept.strip():
        return default
    best, best_q = None, 0.0
    for offer in accept.split(","):
        kind, _, params = offer.partition(";")
        kind = kind.strip().lower()
        choice = default if kind == "*/*" else _WILDCARDS.get(kind, kind if kind in MEDIA_TYPES else None)
        quality = _quality(params)
        if choice is not None and quality > best_q:
            best, best_q = choice, quality
    return best


def _quality(params):
    for param in params.split(";"):
        name, _, value = param.partition("=")
        if name.strip().lower() == "q":
            try:
                return float(value)
            except ValueError:
                return 0.0
    return 1.0


def _cell(value):
    return repr(value) if isinstance(value, float) else str(value)  # repr: the float round-trips


def _finite_or_none(value):
    """JSON has no NaN or Infinity: a prediction that is not finite is written as null."""
    if isinstance(value, list):
        return [_finite_or_none(v) for v in value]
    return None if isinstance(value, float) and not math.isfinite(value) else value
