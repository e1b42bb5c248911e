"""Wall time of a full local materialization vs. the time spent inside the step scripts.

Each run materializes the whole graph with the Dagster CLI (as `make run` does) from an empty
$MLOPS_HOME, then reads the local job logs for how long each script process ran. The difference
is orchestration: the Dagster CLI and code location, the SDK building the definition, the
local SageMaker worker, staging inputs and uploading outputs, registering the model and
starting the dev endpoint (server start, model load, smoke test).

    .venv/bin/python bench/e2e.py [--runs 3] [--source synthetic|PATH]
"""

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT_LINE = re.compile(r"=== (?:training|processing) job pipelines-\w+-(?P<step>[a-z0-9-]+?)-\w{6}: script ran (?P<s>[\d.]+) s ===")


def one_run(source: str) -> tuple[float, dict[str, float]]:
    with tempfile.TemporaryDirectory(prefix="mlops-bench-") as home:
        env = {**os.environ, "MLOPS_HOME": home, "DAGSTER_HOME": f"{home}/dagster", "MLOPS_DATA_SOURCE": source}
        Path(home, "dagster").mkdir()
        (Path(home, "dagster") / "dagster.yaml").write_text((REPO / "config" / "dagster.yaml").read_text())
        dagster = Path(sys.executable).with_name("dagster")
        started = time.perf_counter()
        done = subprocess.run(
            [str(dagster), "asset", "materialize", "-m", "mlops_dagster", "--select", "*"],
            cwd=REPO, env=env, capture_output=True, text=True,
        )  # fmt: skip
        wall = time.perf_counter() - started
        # The graph leaves the dev endpoint serving: stop it before the home is deleted.
        subprocess.run([str(dagster), "job", "execute", "-m", "mlops_dagster", "-j", "stop_endpoints"],
                       cwd=REPO, env=env, capture_output=True, check=True)  # fmt: skip
        if done.returncode != 0:
            sys.exit(f"materialization failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
        scripts: dict[str, float] = {}
        for log in Path(home, "sagemaker", "logs").glob("*.log"):
            for match in SCRIPT_LINE.finditer(log.read_text(errors="replace")):
                scripts[match["step"]] = scripts.get(match["step"], 0.0) + float(match["s"])
        return wall, scripts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--source", default="synthetic")
    args = parser.parse_args()
    walls, per_step = [], {}
    for i in range(args.runs):
        wall, scripts = one_run(args.source)
        walls.append(wall)
        for step, seconds in scripts.items():
            per_step.setdefault(step, []).append(seconds)
        print(f"run {i + 1}: wall {wall:6.1f} s, scripts {sum(scripts.values()):5.1f} s  "
              + "  ".join(f"{k} {v:.1f}" for k, v in sorted(scripts.items())), flush=True)  # fmt: skip
    script_totals = [sum(values[i] for values in per_step.values()) for i in range(args.runs)]
    wall_median, script_median = statistics.median(walls), statistics.median(script_totals)
    print(f"\nsource: {args.source}, runs: {args.runs} (medians)")
    print(f"  full local materialization (dagster asset materialize --select '*'): {wall_median:6.1f} s")
    for step, values in sorted(per_step.items()):
        print(f"  inside {step + '.py':<16} {statistics.median(values):6.2f} s")
    print(f"  inside the step scripts, total:  {script_median:6.2f} s")
    print(f"  orchestration overhead:          {wall_median - script_median:6.1f} s "
          f"({(wall_median - script_median) / wall_median:.0%} of the wall time)")  # fmt: skip


if __name__ == "__main__":
    main()
