"""Throughput and latency of the local endpoint against the same predictions made in-process.

Trains the pipeline's model (random forest, 100 trees, 1,000 synthetic rows), starts a local
endpoint server on 127.0.0.1, deploys the model, and drives it with concurrent clients (one
keep-alive connection each) for single-row and 1,000-row CSV requests. Every phase stops at a
request count or a time limit, whichever comes first. The clients run in their own process
(bench/http_load.py: one asyncio loop, httptools parsing): client and server share this machine's
cores, and Python threads on http.client cost about as much CPU per request as the server itself.
The same run also drives the endpoint with those threads (http.client, in this process), as the
bench did before, to show the client's share. The floor is model.predict in this
process on the model as the endpoint loads it (model_fn), with one thread and with as many
threads as clients; "handlers" adds the CSV parsing and writing the endpoint does. The server is
stopped at the end.

Data capture, on and off in the same run: the same server is redeployed with the same model and
a DataCaptureConfig of 100% (capture on, into a local object store in the temporary folder) or
none (off), alternately for --capture-rounds rounds, and driven with single-row CSV requests
from the clients. Goal (issue 10): capture adds <= 10% to the p50 latency. --quick runs only this
comparison, shorter.

Batching (issue 12): the server batches concurrent requests (serving/batching.py). The full run ends
with the goals: single-row CSV at --clients clients (>= 1,000 req/s, p99 <= 20 ms), the same on a
second server started with batching off (MLOPS_ENDPOINT_BATCHING=off), and the 1,000-row CSV
throughput against in-process predict at as many threads (>= 0.95x), with its ceiling on this machine
(predict_fn's share of the CPU a request costs: input_fn + predict_fn + output_fn, one thread, as
csv_ceiling says). --load drives single-row CSV
from --load-connections connections (64) for --load-seconds (60) and prints the error count (goal:
zero; a non-200 answer or a failed connection is an error, the connection is reopened), p50, p99
and throughput.

    .venv/bin/python bench/endpoint.py [--clients 8] [--rounds 2] [--seconds 5] [--single 1000] [--batches 100]
                                       [--capture-rounds 4] [--quick]
    .venv/bin/python bench/endpoint.py --load [--load-connections 64] [--load-seconds 60]
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import joblib
import numpy as np
from sklearn.ensemble import RandomForestRegressor

from mlops_dagster.datasets import BOSTON_FEATURES, BOSTON_TARGET, synthetic_boston
from mlops_dagster.monitoring.capture import CONTENT_TYPE_HEADER, CaptureSettings
from mlops_dagster.serving import process
from mlops_dagster.serving.app import load_handlers
from mlops_dagster.serving.batching import ENV_BATCHING

handlers = load_handlers()
HTTP_LOAD = Path(__file__).resolve().parent / "http_load.py"


@dataclass
class Figures:
    label: str
    latencies: list[float]  # seconds per call
    wall: float
    rows_per_call: int

    def add(self, other: Figures) -> Figures:
        """Pool two rounds of the same phase: all calls over the time of both."""
        return Figures(self.label, self.latencies + other.latencies, self.wall + other.wall, self.rows_per_call)

    def line(self) -> str:
        calls = len(self.latencies)
        p50, p99 = np.percentile(self.latencies, [50, 99]) * 1000
        return (
            f"  {self.label:<50} {calls:>6} {calls / self.wall:>9.1f} {calls * self.rows_per_call / self.wall:>10.0f}"
            f" {p50:>8.2f} {p99:>8.2f}"
        )

    @property
    def throughput(self) -> float:
        return len(self.latencies) / self.wall

    @property
    def p50(self) -> float:
        return float(np.percentile(self.latencies, 50))


def drive(
    label: str, threads: int, budget: int, seconds: float, rows: int, make_call: Callable[[], Callable[[int], None]]
) -> Figures:
    """Run calls from ``threads`` threads until ``budget`` calls are made or ``seconds`` pass.

    ``make_call`` runs once per thread (e.g. to open its connection) and returns the call."""
    latencies: list[float] = []
    lock = threading.Lock()
    issued = 0
    deadline = time.perf_counter() + seconds

    def worker() -> None:
        nonlocal issued
        call = make_call()
        try:
            while time.perf_counter() < deadline:
                with lock:
                    if issued >= budget:
                        return
                    issued += 1
                    i = issued
                started = time.perf_counter()
                call(i)
                elapsed = time.perf_counter() - started
                with lock:
                    latencies.append(elapsed)
        finally:
            getattr(call, "close", lambda: None)()  # the client's connection

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    started = time.perf_counter()
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return Figures(label, latencies, time.perf_counter() - started, rows)


def csv_bodies(X: np.ndarray, rows: int, count: int = 64) -> list[bytes]:
    """``count`` request bodies of ``rows`` rows each, cycling through the data."""
    bodies = []
    for k in range(count):
        take = np.take(X, range(k * rows, (k + 1) * rows), axis=0, mode="wrap")
        bodies.append("".join(",".join(map(repr, r)) + "\n" for r in take.tolist()).encode())
    return bodies


def http_client(record: process.EndpointRecord, bodies: list[bytes]) -> Callable[[], Callable[[int], None]]:
    def make() -> Callable[[int], None]:
        conn = http.client.HTTPConnection("127.0.0.1", record.port, timeout=60)
        headers = {"Content-Type": "text/csv", "Accept": "text/csv"}

        def call(i: int) -> None:
            conn.request("POST", "/invocations", body=bodies[i % len(bodies)], headers=headers)
            response = conn.getresponse()
            body = response.read()
            if response.status != 200:
                raise RuntimeError(f"endpoint answered {response.status}: {body[:200]!r}")

        call.close = conn.close  # type: ignore[attr-defined]
        return call

    return make


@dataclass
class HttpLoad:
    """A phase's HTTP clients in their own process (bench/http_load.py), one connection each."""

    record: process.EndpointRecord
    bodies: list[bytes]

    def run(self, label: str, connections: int, budget: int, seconds: float, rows: int) -> tuple[Figures, list[str]]:
        """The phase's figures and its errors (non-200 answers, failed connections)."""
        with tempfile.NamedTemporaryFile("w", suffix=".json") as bodies:
            json.dump([b.decode() for b in self.bodies], bodies)
            bodies.flush()
            command = [sys.executable, str(HTTP_LOAD), "--port", str(self.record.port), "--connections"]
            command += [str(connections), "--seconds", str(seconds), "--budget", str(budget), "--bodies", bodies.name]
            done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{HTTP_LOAD.name} failed ({done.returncode}): {done.stderr[-2000:]}")
        result = json.loads(done.stdout)
        return Figures(label, result["latencies"], result["wall"], rows), result["errors"]

    def __call__(self, label: str, connections: int, budget: int, seconds: float, rows: int) -> Figures:
        """A phase that must not fail: any error stops the bench."""
        figures, errors = self.run(label, connections, budget, seconds, rows)
        if errors:
            raise RuntimeError(f"{label}: {len(errors)} errors, e.g. {errors[0]}")
        return figures


def run_phase(label: str, threads: int, budget: int, seconds: float, rows: int, factory) -> Figures:
    """An HttpLoad phase in its own process, else ``drive`` on threads in this process."""
    if isinstance(factory, HttpLoad):
        return factory(label, threads, budget, seconds, rows)
    return drive(label, threads, budget, seconds, rows, factory)


def in_process(model, bodies: list[bytes], with_handlers: bool) -> Callable[[], Callable[[int], None]]:
    matrices = [handlers.input_fn(b, "text/csv", model.features) for b in bodies]

    def make() -> Callable[[int], None]:
        def call(i: int) -> None:
            if with_handlers:
                data = handlers.input_fn(bodies[i % len(bodies)], "text/csv", model.features)
                handlers.output_fn(handlers.predict_fn(data, model), "text/csv")
            else:
                handlers.predict_fn(matrices[i % len(matrices)], model)

        return call

    return make


def train(workdir: Path) -> tuple[Path, str, np.ndarray]:
    frame = synthetic_boston(1000, seed=42)
    model = RandomForestRegressor(n_estimators=100, random_state=42, n_jobs=-1)  # as train.py
    model.fit(frame[BOSTON_FEATURES], frame[BOSTON_TARGET])
    model_dir = workdir / "model"
    model_dir.mkdir()
    joblib.dump(model, model_dir / "model.joblib")
    (model_dir / "features.json").write_text(json.dumps(BOSTON_FEATURES))
    archive = workdir / "model.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for path in sorted(model_dir.iterdir()):
            tar.add(path, arcname=path.name)
    X = synthetic_boston(2000, seed=7)[BOSTON_FEATURES].to_numpy(dtype=float)
    return archive, hashlib.sha256(archive.read_bytes()).hexdigest(), X


def _load() -> str:
    """The machine's 1/5/15-minute load: figures from a busy machine are not comparable."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def phases(n: int, record, model, as_trained, bodies: list[bytes]) -> list[tuple[str, int, float, Callable]]:
    """(label, threads, share of the call budget and time limit, call factory) of one request size."""
    fitted = handlers.Model(as_trained, model.features)
    return [
        (f"endpoint over HTTP, {n} clients", n, 1.0, HttpLoad(record, bodies)),
        (f"endpoint over HTTP, {n} http.client threads here", n, 1.0, http_client(record, bodies)),
        (f"in-process predict, {n} threads", n, 1.0, in_process(model, bodies, False)),
        (f"in-process handlers, {n} threads", n, 1.0, in_process(model, bodies, True)),
        ("in-process predict, 1 thread", 1, 1.0, in_process(model, bodies, False)),
        ("in-process handlers, 1 thread", 1, 1.0, in_process(model, bodies, True)),
        ("in-process predict as fitted (n_jobs=-1), 1 thread", 1, 0.25, in_process(fitted, bodies, False)),
    ]


def capture_spec(home: Path, percentage: int = 100) -> dict:
    """A deploy's capture (what hosting sends for a DataCaptureConfig) into the bench's own store."""
    settings = CaptureSettings.from_data_capture_config(
        {
            "InitialSamplingPercentage": percentage,
            "DestinationS3Uri": "s3://bench/datacapture",
            "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}],
            "CaptureContentTypeHeader": CONTENT_TYPE_HEADER,
        },
        "bench",
    )
    return {"settings": settings.to_dict(), "store_root": str(home / "s3")}


def capture_comparison(args, record, archive: Path, sha256: str, X: np.ndarray, home: Path) -> None:
    """Single-row CSV with capture on (100%) and off, same server and model, alternating rounds."""
    bodies = csv_bodies(X, 1)
    pooled: dict[str, Figures] = {}
    for round_number in range(args.capture_rounds):
        order = [("capture on (100%)", capture_spec(home)), ("capture off", None)]
        for label, capture in order if round_number % 2 == 0 else order[::-1]:
            process.deploy(record, archive, sha256, "arn:bench", X[:2], capture=capture)  # same model: capture only
            figures = HttpLoad(record, bodies)(label, args.clients, args.single, args.seconds, 1)
            pooled[label] = pooled[label].add(figures) if label in pooled else figures
        print(f"  capture round {round_number + 1} done, load average {_load()}", flush=True)
    counts = process.flush_capture(record)
    on, off = pooled["capture on (100%)"], pooled["capture off"]
    print(f"\nsingle-row CSV, {args.clients} clients, {args.capture_rounds} alternating rounds of each")
    print(f"  {'':<50} {'calls':>6} {'calls/s':>9} {'rows/s':>10} {'p50 ms':>8} {'p99 ms':>8}")
    print(on.line())
    print(off.line())
    p99 = [float(np.percentile(f.latencies, 99)) for f in (on, off)]
    print(
        f"  capture on / off: p50 {on.p50 / off.p50:4.2f}x ({(on.p50 / off.p50 - 1) * 100:+.1f}%, goal <= +10%),"
        f" p99 {p99[0] / p99[1]:4.2f}x, throughput {on.throughput / off.throughput:4.2f}x"
    )
    print(
        f"  captured {counts['captured']} of the {len(on.latencies)} requests sent with capture on; written"
        f" {counts['written']} in {counts['files']} files, dropped {counts['dropped']}, failed writes"
        f" {counts['failed_writes']}"
    )


def load(args, record, X: np.ndarray) -> None:
    """--load: single-row CSV from many connections for a long time; errors, p50, p99, throughput."""
    label = f"load: single-row CSV, {args.load_connections} connections"
    print(f"{label}, {args.load_seconds:.0f} s; load average {_load()}", flush=True)
    figures, errors = HttpLoad(record, csv_bodies(X, 1)).run(label, args.load_connections, 10**9, args.load_seconds, 1)
    status = process.endpoint_status(record)
    p50, p99, worst = np.percentile(figures.latencies, [50, 99, 100]) * 1000
    print(f"  {'':<50} {'calls':>6} {'calls/s':>9} {'rows/s':>10} {'p50 ms':>8} {'p99 ms':>8}")
    print(figures.line())
    print(
        f"  {len(figures.latencies)} requests in {figures.wall:.1f} s: {figures.throughput:.0f} req/s,"
        f" p50 {p50:.2f} ms, p99 {p99:.2f} ms, max {worst:.1f} ms; errors: {len(errors)} (goal: 0)"
    )
    for text in sorted(set(errors))[:5]:
        print(f"    error: {text}")
    print(f"  server: {status.get('batching')}; load average {_load()}")


def batching_off(args, home: Path, archive: Path, sha256: str, X: np.ndarray) -> Figures:
    """Single-row CSV at --clients clients on a second server started with batching off."""
    os.environ[ENV_BATCHING] = "off"  # the server reads it at start (process.py passes the environment)
    try:
        record = process.start_endpoint(home, "bench-unbatched")
    finally:
        del os.environ[ENV_BATCHING]
    try:
        process.deploy(record, archive, sha256, "arn:bench", X[:2])
        label = f"endpoint, batching off, {args.clients} clients"
        return HttpLoad(record, csv_bodies(X, 1))(label, args.clients, args.single, args.seconds, 1)
    finally:
        process.stop_endpoint(home, "bench-unbatched")


def median_seconds(call: Callable[[], object], calls: int = 30) -> float:
    """The median wall time of ``calls`` calls, one after another in this thread."""
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return float(np.median(times))


def predict_cost(model, X: np.ndarray) -> None:
    """Where a batch's time goes: predict_fn on 1, 8 and 64 rows in this process, one thread, and the
    ceiling that sets for --clients clients when each round of their requests is one predict."""
    print("\npredict_fn in this process, one thread (median of 30 calls): what one batch costs")
    costs = {}
    for rows in (1, 8, 64):
        costs[rows] = median_seconds(lambda data=X[:rows]: handlers.predict_fn(data, model))
        print(f"  {rows:>3} rows: {costs[rows] * 1000:6.2f} ms")
    print(
        f"  ceiling with one predict per batch of 8 requests: 8 / {costs[8] * 1000:.2f} ms ="
        f" {8 / costs[8]:.0f} req/s (HTTP, parsing and writing come on top)"
    )


def csv_ceiling(model, body: bytes) -> float:
    """The best 1,000-row ratio any server of these handlers can reach on this machine: with every
    core busy, throughput is cores / CPU per request, and a request costs the endpoint at least
    input_fn + predict_fn + output_fn where in-process predict pays predict_fn only. Prints the
    parts (median of 30 calls each, one thread) and returns predict / (parse + predict + write)."""
    data = handlers.input_fn(body, "text/csv", model.features)
    prediction = handlers.predict_fn(data, model)
    parts = {
        "input_fn (CSV parse)": lambda: handlers.input_fn(body, "text/csv", model.features),
        "predict_fn": lambda: handlers.predict_fn(data, model),
        "output_fn (CSV write)": lambda: handlers.output_fn(prediction, "text/csv"),
    }
    costs = {name: median_seconds(call) for name, call in parts.items()}
    print("\n1,000-row CSV, one thread (median of 30 calls): the CPU a request costs beyond predict")
    for name, cost in costs.items():
        print(f"  {name:<22} {cost * 1000:6.2f} ms")
    ceiling = costs["predict_fn"] / sum(costs.values())
    print(f"  ceiling of endpoint / in-process predict with every core busy: predict / all three = {ceiling:.2f}x")
    return ceiling


def goals(args, record, pooled: dict, unbatched: Figures, labels: list[str], ceiling: float) -> None:
    single = pooled[("single-row CSV", labels[0])]
    big, big_predict, big_handlers = (pooled[("1,000-row CSV", label)] for label in labels[:3])
    p99 = float(np.percentile(single.latencies, 99)) * 1000
    off_p99 = float(np.percentile(unbatched.latencies, 99)) * 1000
    print("\ngoals (issue 12)")
    print(
        f"  single-row CSV, {args.clients} clients, batching on:  {single.throughput:7.0f} req/s, p99 {p99:6.2f} ms"
        "   (goal >= 1,000 req/s, p99 <= 20 ms)"
    )
    threads = pooled[("single-row CSV", labels[3])]
    print(
        f"  single-row CSV, {args.clients} http.client threads in the bench process: {threads.throughput:7.0f} req/s, p99"
        f" {float(np.percentile(threads.latencies, 99)) * 1000:6.2f} ms   (same run: the old client's cost)"
    )
    print(
        f"  single-row CSV, {args.clients} clients, batching off: {unbatched.throughput:7.0f} req/s,"
        f" p99 {off_p99:6.2f} ms   (same run; on/off throughput {single.throughput / unbatched.throughput:.1f}x)"
    )
    print(
        f"  1,000-row CSV, {args.clients} clients: endpoint / in-process predict throughput"
        f" {big.throughput / big_predict.throughput:.2f}x   (goal >= 0.95x)"
    )
    print(
        f"  1,000-row CSV, {args.clients} threads: in-process handlers / in-process predict throughput"
        f" {big_handlers.throughput / big_predict.throughput:.2f}x   (same run: what parsing and writing"
        " the CSV cost, without HTTP)"
    )
    print(f"  1,000-row CSV: ceiling from one thread's CPU per request {ceiling:.2f}x   (same run, above)")
    counts = process.endpoint_status(record)["batching"]
    print(
        f"  the server batched (whole run, all phases): {counts['requests']} requests in {counts['batches']} batches"
        f" ({counts['requests'] / max(counts['batches'], 1):.1f} requests, {counts['rows'] / max(counts['batches'], 1):.0f}"
        f" rows per batch; largest {counts['largest']} requests), {counts['alone']} predicted alone,"
        f" {counts['fallbacks']} batches fell back; settings: up to {counts['max_rows']} rows, {counts['max_wait_ms']:g} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2, help="rounds of all phases, in alternating order")
    parser.add_argument("--seconds", type=float, default=5.0, help="time limit of each phase in each round")
    parser.add_argument("--single", type=int, default=1000, help="single-row calls per phase and round (at most)")
    parser.add_argument("--batches", type=int, default=100, help="1,000-row calls per phase and round (at most)")
    parser.add_argument("--capture-rounds", type=int, default=4, help="rounds of capture on and off, alternating")
    parser.add_argument("--quick", action="store_true", help="only the capture comparison, at most 3 s per phase")
    parser.add_argument("--load", action="store_true", help="only the load test (--load-connections, --load-seconds)")
    parser.add_argument("--load-connections", type=int, default=64)
    parser.add_argument("--load-seconds", type=float, default=60.0)
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.single = min(args.seconds, 3.0), min(args.single, 600)

    with tempfile.TemporaryDirectory(prefix="mlops-bench-endpoint-") as tmp:
        home = Path(tmp) / "home"
        workdir = Path(tmp) / "work"
        workdir.mkdir()
        archive, sha256, X = train(workdir)
        model = handlers.model_fn(str(workdir / "model"))  # as the endpoint loads it (n_jobs=1)
        as_trained = joblib.load(workdir / "model" / "model.joblib")  # n_jobs=-1, as train.py fits it
        sizes = [
            ("single-row CSV", csv_bodies(X, 1), 1, args.single),
            ("1,000-row CSV", csv_bodies(X, 1000, 8), 1000, args.batches),
        ]

        started = time.perf_counter()
        record = process.start_endpoint(home, "bench")
        up = time.perf_counter() - started
        try:
            started = time.perf_counter()
            process.deploy(record, archive, sha256, "arn:bench", X[:2])
            deployed = time.perf_counter() - started
            batch = sizes[1][1][0]
            served = process.invoke(record, batch, "text/csv", "text/csv")
            expected = handlers.predict_fn(handlers.input_fn(batch, "text/csv", model.features), model)
            same = [float(v) for v in served.body.split()] == expected.tolist()
            print(f"model: random forest, 100 trees, fitted on 1,000 synthetic rows; {os.cpu_count()} CPUs here")
            print(f"endpoint: up in {up:.2f} s, first deploy {deployed:.2f} s; predictions equal in-process: {same}")
            if args.load:
                load(args, record, X)
                return
            rounds = args.capture_rounds if args.quick else args.rounds
            print(
                f"{rounds} rounds, phases in alternating order; a phase stops at {args.single} calls (single rows)"
                f" or after {args.seconds:.0f} s; load average {_load()}",
                flush=True,
            )
            if args.quick:
                capture_comparison(args, record, archive, sha256, X, home)
                return

            pooled: dict[tuple[str, str], Figures] = {}
            for round_number in range(args.rounds):
                for name, bodies, rows, budget in sizes:
                    order = phases(args.clients, record, model, as_trained, bodies)
                    for label, threads, share, factory in order if round_number % 2 == 0 else order[::-1]:
                        figures = run_phase(label, threads, int(budget * share), args.seconds * share, rows, factory)
                        key = (name, label)
                        pooled[key] = pooled[key].add(figures) if key in pooled else figures
                print(f"  round {round_number + 1} done, load average {_load()}", flush=True)

            print("\nhandlers = CSV parsing + predict + CSV writing, what the endpoint runs per request")
            print(f"  {'':<50} {'calls':>6} {'calls/s':>9} {'rows/s':>10} {'p50 ms':>8} {'p99 ms':>8}")
            for name, *_ in sizes:
                print(name)
                for (size, _), figures in pooled.items():
                    if size == name:
                        print(figures.line())
            print(f"\nendpoint / in-process, both with {args.clients} concurrent callers")
            every = [label for label, *_ in phases(args.clients, record, model, as_trained, sizes[0][1])]
            labels = [every[0], every[2], every[3], every[1]]  # endpoint, predict, handlers, thread clients
            for name, *_ in sizes:
                endpoint, predict, full = (pooled[(name, label)] for label in labels[:3])
                print(
                    f"  {name:<15} vs predict: throughput {endpoint.throughput / predict.throughput:4.2f}x,"
                    f" p50 latency {endpoint.p50 / predict.p50:4.2f}x   vs handlers: throughput"
                    f" {endpoint.throughput / full.throughput:4.2f}x, p50 latency {endpoint.p50 / full.p50:4.2f}x"
                )
            if args.capture_rounds:
                capture_comparison(args, record, archive, sha256, X, home)
            predict_cost(model, X)
            ceiling = csv_ceiling(model, sizes[1][1][0])
            goals(args, record, pooled, batching_off(args, home, archive, sha256, X), labels, ceiling)
        finally:
            process.stop_endpoint(home, "bench")


if __name__ == "__main__":
    main()
