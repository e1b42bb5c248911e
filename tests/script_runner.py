"""Runs a container script (training/*.py) as ``python script.py args`` would, in a forked process.

A fresh interpreter spends ~2.5 s importing pandas and scikit-learn before a script's first line,
and test_training_scripts.py runs its scripts ~30 times. A ScriptRunner keeps one "zygote"
process that imported them once; each run forks it, and the child takes the given environment
(only), working directory, argv and sys.path[0], then executes the script as ``__main__`` with
its stdout and stderr in files: its own exit code, output, ``if __name__ == "__main__"`` handlers
and files are what a fresh interpreter gives. Tests that need a truly fresh interpreter use
subprocess (test_training_scripts.run(..., fresh=True)).
"""

from __future__ import annotations

import json
import select
import subprocess
import sys
import tempfile
from pathlib import Path

ZYGOTE = r"""
import json, os, runpy, sys, traceback
import numpy, pandas, joblib, sklearn.ensemble, sklearn.metrics, sklearn.model_selection  # the cost being shared

def child(request):
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
        out = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(out, fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    sys.argv = [request["script"], *request["args"]]
    sys.path[0] = os.path.dirname(request["script"])
    code = 0
    try:
        runpy.run_path(request["script"], run_name="__main__")
    except SystemExit as exc:  # what the interpreter does with sys.exit's argument
        if exc.code is None:
            code = 0
        elif isinstance(exc.code, int):
            code = exc.code
        else:
            print(exc.code, file=sys.stderr)
            code = 1
    except BaseException:
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)

for line in sys.stdin:
    request = json.loads(line)
    pid = os.fork()
    if pid == 0:
        child(request)
    _, status = os.waitpid(pid, 0)
    print(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}), flush=True)
"""


class ScriptRunner:
    """One zygote per runner; ``close()`` ends it (it also ends when the test process does)."""

    def __init__(self, env: dict[str, str]) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-c", ZYGOTE], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True
        )
        self._scratch = tempfile.TemporaryDirectory(prefix="script-runner-")

    def run(self, script: Path, args: list[str], env: dict[str, str], cwd: Path | None,
            timeout: float = 600) -> subprocess.CompletedProcess:  # fmt: skip
        out, err = Path(self._scratch.name) / "stdout", Path(self._scratch.name) / "stderr"
        request = {"script": str(script), "args": list(args), "env": env, "cwd": str(cwd or Path.cwd()),
                   "stdout": str(out), "stderr": str(err)}  # fmt: skip
        self._process.stdin.write(json.dumps(request) + "\n")
        self._process.stdin.flush()
        ready, _, _ = select.select([self._process.stdout], [], [], timeout)
        line = self._process.stdout.readline() if ready else ""
        if not line:
            self.close()
            raise RuntimeError(f"{script.name} {args} gave no exit code within {timeout} s (zygote ended or hung)")
        returncode = json.loads(line)["returncode"]
        return subprocess.CompletedProcess(
            [sys.executable, str(script), *args], returncode, out.read_text(), err.read_text()
        )

    def close(self) -> None:
        if self._process.poll() is None:
            self._process.stdin.close()
            try:
                self._process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._scratch.cleanup()
