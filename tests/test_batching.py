"""The endpoint's batcher on its own: one predict per batch, each caller its own rows, errors kept apart.

Requests are made to arrive together deterministically: the first request's predict is held on a
gate (a threading.Event) while the others queue, so the next batch is exactly what queued.
"""

from __future__ import annotations

import asyncio
import json
import threading

import numpy as np
import pytest
from sklearn.ensemble import RandomForestRegressor

from mlops_dagster.datasets import BOSTON_FEATURES, BOSTON_TARGET, synthetic_boston
from mlops_dagster.serving.app import load_handlers
from mlops_dagster.serving.batching import Batcher, BatchSettings

inference = load_handlers()


async def in_thread(fn, *args):
    return await asyncio.to_thread(fn, *args)


class Recorder:
    """A predict function (row sums) that records the row count of each call; the first call can be held."""

    def __init__(self, hold_first: bool = True, fail_on=None):
        self.calls: list[int] = []
        self.gate = threading.Event()
        self.started = threading.Event()  # the first call has begun
        self.hold_first = hold_first
        self.fail_on = fail_on  # a value: any call whose rows contain it raises

    def __call__(self, model, data: np.ndarray) -> np.ndarray:
        if self.hold_first and not self.calls:
            self.calls.append(len(data))
            self.started.set()
            assert self.gate.wait(30), "the test never released the first predict"
        else:
            self.calls.append(len(data))
        if self.fail_on is not None and (data == self.fail_on).any():
            raise ValueError(f"cannot predict a row holding {self.fail_on}")
        return data.sum(axis=1) + model


async def held_then_together(batcher: Batcher, recorder: Recorder, requests: list[tuple[object, np.ndarray]]):
    """One request first (held in predict), then ``requests`` queued behind it; all results or errors."""
    first = asyncio.ensure_future(batcher.predict(0, np.zeros((1, 2))))
    assert await asyncio.to_thread(recorder.started.wait, 30)  # the first predict has started and is held
    tasks = [asyncio.ensure_future(batcher.predict(model, data)) for model, data in requests]
    await asyncio.sleep(0)  # every request is queued
    recorder.gate.set()
    await first
    return await asyncio.gather(*tasks, return_exceptions=True)


def rows(*values: float, width: int = 2) -> np.ndarray:
    return np.array([[v] * width for v in values], dtype=float)


def test_requests_that_arrive_together_share_one_predict_and_get_their_own_rows():
    recorder = Recorder()
    batcher = Batcher(recorder, BatchSettings(max_rows=64, max_wait_ms=50), in_thread)
    requests = [(0, rows(1)), (0, rows(2, 3)), (0, rows(4)), (0, rows(5, 6, 7))]
    results = asyncio.run(held_then_together(batcher, recorder, requests))
    assert recorder.calls == [1, 7]  # the held one alone, then the four queued ones in one call
    assert [r.tolist() for r in results] == [[2.0], [4.0, 6.0], [8.0], [10.0, 12.0, 14.0]]
    assert batcher.counts.as_dict() == {
        "batches": 2, "requests": 5, "rows": 8, "alone": 0, "fallbacks": 0, "largest": 4
    }  # fmt: skip


def test_a_batch_holds_at_most_max_rows_and_bigger_requests_go_alone():
    recorder = Recorder()
    batcher = Batcher(recorder, BatchSettings(max_rows=3, max_wait_ms=50), in_thread)
    requests = [(0, rows(1, 1)), (0, rows(2)), (0, rows(3, 3)), (0, rows(4, 4, 4, 4))]
    results = asyncio.run(held_then_together(batcher, recorder, requests))
    # held [1 row]; the 4-row request is above max_rows: predicted at once, alone; then 2+1 rows; then 2
    assert sorted(recorder.calls[1:]) == [2, 3, 4] and recorder.calls[0] == 1
    assert max(recorder.calls) == 4 and batcher.counts.alone == 1
    assert [r.tolist() for r in results] == [[2.0, 2.0], [4.0], [6.0, 6.0], [8.0] * 4]


def test_a_failing_batch_is_predicted_request_by_request_so_only_the_bad_one_fails():
    recorder = Recorder(fail_on=-1.0)
    batcher = Batcher(recorder, BatchSettings(max_rows=64, max_wait_ms=50), in_thread)
    requests = [(0, rows(1)), (0, rows(2, -1)), (0, rows(3))]
    results = asyncio.run(held_then_together(batcher, recorder, requests))
    assert [r.tolist() for r in (results[0], results[2])] == [[2.0], [6.0]]
    assert isinstance(results[1], ValueError) and "cannot predict a row holding -1.0" in str(results[1])
    assert recorder.calls == [1, 4, 1, 2, 1]  # held, the batch (failed), then each alone
    assert batcher.counts.fallbacks == 1


def test_predictions_that_do_not_match_the_rows_fall_back_to_one_predict_per_request():
    calls = []

    def one_prediction_per_call(model, data):  # a broken model: one number whatever the rows
        calls.append(len(data))
        if len(calls) == 1:
            started.set()
            gate.wait(30)
        return np.array([float(len(data))])

    gate, started = threading.Event(), threading.Event()
    batcher = Batcher(one_prediction_per_call, BatchSettings(max_rows=64, max_wait_ms=50), in_thread)

    async def scenario():
        first = asyncio.ensure_future(batcher.predict(0, rows(0)))
        assert await asyncio.to_thread(started.wait, 30)
        tasks = [asyncio.ensure_future(batcher.predict(0, rows(*range(n)))) for n in (1, 2)]
        await asyncio.sleep(0)
        gate.set()
        await first
        return await asyncio.gather(*tasks)

    results = asyncio.run(scenario())
    assert calls == [1, 3, 1, 2] and [r.tolist() for r in results] == [[1.0], [2.0]]


def test_requests_on_different_models_are_never_in_one_batch():
    recorder = Recorder()
    batcher = Batcher(recorder, BatchSettings(max_rows=64, max_wait_ms=50), in_thread)
    requests = [(100, rows(1)), (100, rows(2)), (200, rows(3)), (100, rows(4))]
    results = asyncio.run(held_then_together(batcher, recorder, requests))
    assert recorder.calls == [1, 2, 1, 1]  # [100, 100], then [200], then [100]: queue order kept
    assert [r.tolist() for r in results] == [[102.0], [104.0], [206.0], [108.0]]


def test_batching_off_predicts_each_request_alone():
    recorder = Recorder(hold_first=False)
    batcher = Batcher(recorder, BatchSettings(enabled=False), in_thread)

    async def scenario():
        return await asyncio.gather(*(batcher.predict(0, rows(i)) for i in range(5)))

    results = asyncio.run(scenario())
    assert recorder.calls == [1] * 5 and [r.tolist() for r in results] == [[2.0 * i] for i in range(5)]
    assert batcher.counts.batches == 0 and batcher.counts.alone == 5


def test_a_lone_request_after_a_batch_is_answered_when_the_wait_ends():
    recorder = Recorder()
    batcher = Batcher(recorder, BatchSettings(max_rows=64, max_wait_ms=5), in_thread)

    async def scenario():
        await held_then_together(batcher, recorder, [(0, rows(1)), (0, rows(2))])
        return await batcher.predict(0, rows(9))  # fewer than the last batch's two: waits, then goes

    assert asyncio.run(scenario()).tolist() == [18.0]
    assert recorder.calls == [1, 2, 1]


def test_the_batcher_serves_a_second_event_loop():
    recorder = Recorder(hold_first=False)
    batcher = Batcher(recorder, BatchSettings(), in_thread)
    assert asyncio.run(batcher.predict(1, rows(1))).tolist() == [3.0]
    assert asyncio.run(batcher.predict(1, rows(2))).tolist() == [5.0]  # a new loop, a new worker


def test_batched_forest_predictions_equal_unbatched_ones_exactly():
    frame = synthetic_boston(300, seed=3)
    forest = RandomForestRegressor(n_estimators=20, random_state=0, n_jobs=1)
    model = inference.Model(forest.fit(frame[BOSTON_FEATURES], frame[BOSTON_TARGET]), BOSTON_FEATURES)
    requests = [synthetic_boston(n, seed=s)[BOSTON_FEATURES].to_numpy(dtype=float) for s, n in enumerate((1, 3, 1, 5))]
    gate, started = threading.Event(), threading.Event()

    def predict(model, data):
        if not started.is_set():
            started.set()
            gate.wait(30)
        return inference.predict_fn(data, model)

    batcher = Batcher(predict, BatchSettings(max_rows=64, max_wait_ms=50), in_thread)

    async def scenario():
        first = asyncio.ensure_future(batcher.predict(model, requests[0]))
        assert await asyncio.to_thread(started.wait, 30)
        tasks = [asyncio.ensure_future(batcher.predict(model, data)) for data in requests[1:]]
        await asyncio.sleep(0)
        gate.set()
        return [await first, *await asyncio.gather(*tasks)]

    batched = asyncio.run(scenario())
    assert batcher.counts.largest == 3  # the three that queued were one predict
    for data, result in zip(requests, batched, strict=True):
        alone = inference.predict_fn(data, model)
        assert result.dtype == alone.dtype and result.tolist() == alone.tolist()  # exact, not approximate
        assert inference.output_fn(result, "text/csv") == inference.output_fn(alone, "text/csv")


def test_settings_from_the_environment():
    assert BatchSettings.from_environ({}) == BatchSettings(True, 512, 2.0)
    given = {"MLOPS_ENDPOINT_BATCHING": "off", "MLOPS_ENDPOINT_BATCH_MAX_ROWS": "8"}
    assert BatchSettings.from_environ(given) == BatchSettings(False, 8, 2.0)
    assert BatchSettings.from_environ({"MLOPS_ENDPOINT_BATCH_MAX_WAIT_MS": " 0.5 "}).max_wait_ms == 0.5


@pytest.mark.parametrize(
    "environ, message",
    [
        ({"MLOPS_ENDPOINT_BATCHING": "sometimes"}, "MLOPS_ENDPOINT_BATCHING='sometimes': use on or off"),
        ({"MLOPS_ENDPOINT_BATCH_MAX_ROWS": "0"}, "MLOPS_ENDPOINT_BATCH_MAX_ROWS=0: the batch size must be"),
        ({"MLOPS_ENDPOINT_BATCH_MAX_ROWS": "1.5"}, "MLOPS_ENDPOINT_BATCH_MAX_ROWS='1.5' is not a whole number"),
        ({"MLOPS_ENDPOINT_BATCH_MAX_WAIT_MS": "-1"}, "MLOPS_ENDPOINT_BATCH_MAX_WAIT_MS=-1.0: the wait must be 0 to"),
        ({"MLOPS_ENDPOINT_BATCH_MAX_WAIT_MS": "soon"}, "MLOPS_ENDPOINT_BATCH_MAX_WAIT_MS='soon' is not milliseconds"),
    ],
)
def test_bad_settings_name_the_variable(environ, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
        BatchSettings.from_environ(environ)


# --- the server's /invocations with batching (the ASGI app driven in-process) -------------------


class GatedHandlers:
    """training/inference.py with predict_fn held on its first call, and failing on a marker row."""

    MARKER = 999.0

    def __init__(self):
        self.module = load_handlers()
        self.original = self.module.predict_fn
        self.started, self.gate = threading.Event(), threading.Event()
        self.calls: list[int] = []
        self.module.predict_fn = self.predict_fn

    def predict_fn(self, data, model):
        self.calls.append(len(data))
        if not self.started.is_set():
            self.started.set()
            assert self.gate.wait(30), "the test never released the first predict"
        if (np.asarray(data)[:, 0] == self.MARKER).any():
            raise ValueError(f"the model cannot take crim={self.MARKER}")
        return self.original(data, model)


@pytest.fixture(scope="module")
def boston_model():
    frame = synthetic_boston(300, seed=5)
    forest = RandomForestRegressor(n_estimators=20, random_state=1, n_jobs=1)
    return inference.Model(forest.fit(frame[BOSTON_FEATURES], frame[BOSTON_TARGET]), BOSTON_FEATURES)


def served_app(tmp_path, model, gated: GatedHandlers):
    from datetime import UTC, datetime

    from mlops_dagster.serving.app import LiveModel, create_app

    app = create_app("token", tmp_path / "models", gated.module, BatchSettings(max_rows=64, max_wait_ms=50))
    endpoint = app.state.endpoint
    endpoint.live = LiveModel(model, "0" * 64, None, "model.tar.gz", tmp_path, datetime.now(UTC).isoformat())
    captured: list[tuple] = []
    endpoint.capture.request = lambda *args: captured.append(args)  # what capture is handed, per request
    return app, endpoint, captured


async def post(app, body: bytes, headers: dict[str, str]) -> tuple[int, str, bytes]:
    """POST /invocations through the ASGI app: (status, content type, body)."""
    all_headers = {**headers, "content-length": str(len(body))}
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": "/invocations", "raw_path": b"/invocations", "query_string": b"", "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in all_headers.items()],
        "client": ("127.0.0.1", 40000), "server": ("127.0.0.1", 8080),
    }  # fmt: skip
    chunks = [{"type": "http.request", "body": body, "more_body": False}]
    messages: list[dict] = []

    async def receive():
        return chunks.pop() if chunks else {"type": "http.disconnect"}

    async def send(message):
        messages.append(message)

    await app(scope, receive, send)
    start = messages[0]
    returned = dict(start["headers"]).get(b"content-type", b"").decode()
    return start["status"], returned, b"".join(m.get("body", b"") for m in messages[1:])


def csv_of(frame) -> bytes:
    return "".join(",".join(map(repr, row)) + "\n" for row in frame.to_numpy(dtype=float).tolist()).encode()


async def held_then_posted(app, endpoint, gated: GatedHandlers, requests: list[tuple[bytes, dict]], queued: int):
    """One request first (held in predict), then ``requests`` while it is held (``queued`` of them
    reach the batcher): their answers."""
    first = asyncio.ensure_future(
        post(app, csv_of(synthetic_boston(1, seed=0)[BOSTON_FEATURES]), {"content-type": "text/csv"})
    )
    assert await asyncio.to_thread(gated.started.wait, 30)
    tasks = [asyncio.ensure_future(post(app, body, headers)) for body, headers in requests]
    while endpoint.batcher.queued < queued:  # yield until they are parsed and queued
        await asyncio.sleep(0)
    gated.gate.set()
    assert (await first)[0] == 200
    return await asyncio.gather(*tasks)


def test_concurrent_requests_are_one_predict_and_each_gets_its_own_answer(tmp_path, boston_model):
    gated = GatedHandlers()
    app, endpoint, captured = served_app(tmp_path, boston_model, gated)
    one, two, three = (synthetic_boston(n, seed=s)[BOSTON_FEATURES] for s, n in ((1, 1), (2, 2), (3, 3)))
    json_body = json.dumps({"instances": two.to_numpy().tolist()}).encode()
    requests = [
        (csv_of(one), {"content-type": "text/csv", "accept": "text/csv"}),
        (json_body, {"content-type": "application/json", "accept": "application/json"}),
        (b"0.1,x\n", {"content-type": "text/csv"}),  # input_fn refuses it: never queued
        (csv_of(three), {"content-type": "text/csv", "accept": "application/json"}),
        (csv_of(one), {"content-type": "text/csv", "accept": "image/png"}),  # output_fn refuses it: 406
    ]
    answers = asyncio.run(held_then_posted(app, endpoint, gated, requests, queued=4))

    assert gated.calls == [1, 7]  # the held request, then 1 + 2 + 3 + 1 rows in one predict
    for (body, headers), (status, returned, data) in zip(requests, answers, strict=True):
        if status != 200:
            continue
        kind = headers["content-type"]
        alone = inference.output_fn(
            inference.predict_fn(inference.input_fn(body, kind, BOSTON_FEATURES), boston_model), headers["accept"]
        )
        assert (data.decode(), returned.split(";")[0]) == alone  # byte for byte what an unbatched request gets
    assert [status for status, _, _ in answers] == [200, 200, 400, 200, 406]
    assert "row 1 has 2 values, expected 13" in json.loads(answers[2][2])["error"]
    assert "image/png offers nothing this endpoint writes" in json.loads(answers[4][2])["error"]
    # capture is handed each served request and its own answer, as without batching
    served = [
        (body, headers["content-type"], data)
        for (body, headers), (status, _, data) in zip(requests, answers, strict=True)
        if status == 200
    ]
    assert sorted((args[0], args[1], args[2]) for args in captured[1:]) == sorted(served)


def test_a_request_the_model_cannot_predict_fails_alone_and_its_batch_neighbours_are_answered(tmp_path, boston_model):
    gated = GatedHandlers()
    app, endpoint, _ = served_app(tmp_path, boston_model, gated)
    good, bad = synthetic_boston(2, seed=4)[BOSTON_FEATURES], synthetic_boston(1, seed=6)[BOSTON_FEATURES]
    bad.iloc[0, 0] = GatedHandlers.MARKER
    headers = {"content-type": "text/csv", "accept": "text/csv"}
    answers = asyncio.run(held_then_posted(app, endpoint, gated, [(csv_of(good), headers), (csv_of(bad), headers)], 2))
    assert [status for status, _, _ in answers] == [200, 500]
    assert "the model failed: ValueError: the model cannot take crim=999.0" in answers[1][2].decode()
    expected = inference.predict_fn(good.to_numpy(dtype=float), boston_model).tolist()
    assert [float(v) for v in answers[0][2].split()] == expected
    assert gated.calls == [1, 3, 2, 1] and endpoint.batcher.counts.fallbacks == 1  # batch failed, then each alone


def test_settings_refuse_a_bad_batching_value_at_load_time():
    from mlops_dagster.settings import Settings, SettingsError

    with pytest.raises(SettingsError, match=r"MLOPS_ENDPOINT_BATCH_MAX_ROWS='lots' is not a whole number of rows"):
        Settings.from_env({"MLOPS_ENDPOINT_BATCH_MAX_ROWS": "lots"})
    assert Settings.from_env({"MLOPS_ENDPOINT_BATCHING": "off"}).backend == "local"


def test_a_server_started_with_a_bad_batching_value_says_which_and_does_not_serve(tmp_path, monkeypatch):
    from mlops_dagster.serving import process

    monkeypatch.setenv("MLOPS_ENDPOINT_BATCH_MAX_WAIT_MS", "5000")  # the server process inherits it
    with pytest.raises(process.EndpointError, match=r"exited with code 1 before answering /ping") as refused:
        process.start_endpoint(tmp_path, "batchbad")
    assert "endpoint batchbad: MLOPS_ENDPOINT_BATCH_MAX_WAIT_MS=5000.0: the wait must be 0 to 1000 milliseconds" in str(
        refused.value
    )
    assert process.read_endpoint(tmp_path, "batchbad") is None  # nothing recorded, nothing left running
