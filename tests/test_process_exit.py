"""Interpreter exit without the final collection over the whole heap (mlops_dagster/process_exit.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mlops_dagster import process_exit

PACKAGE_DIR = Path(process_exit.__file__).parent

# Imports process_exit alone (a stub package: the code location's import is not what is tested),
# leaves a reference cycle with a finalizer alive at exit, and reports from two atexit handlers,
# one registered before install() and one after, how many objects were frozen when each ran.
_PROBE = """
import atexit, gc, json, sys, types
package = types.ModuleType('mlops_dagster')
package.__path__ = [sys.argv[1]]
sys.modules['mlops_dagster'] = package
seen = {}
report = sys.argv[2]

def write():
    with open(report, 'w') as f:
        json.dump(seen, f)

atexit.register(lambda: (seen.__setitem__('before_install', gc.get_freeze_count()), write()))
from mlops_dagster import process_exit
seen['installed'] = process_exit.install()
seen['again'] = process_exit.install()
atexit.register(lambda: seen.__setitem__('after_install', gc.get_freeze_count()))

class Finalized:
    def __del__(self, _open=open, _path=sys.argv[3]):  # bound now: builtins are gone by then
        with _open(_path, 'w') as f:
            f.write('collected')

cycle = Finalized()
cycle.self = cycle  # unreachable once the module is torn down: only the cyclic collector frees it
"""


def _exit(tmp_path: Path, monkeypatch, collect: str | None) -> tuple[dict, Path]:
    if collect is None:
        monkeypatch.delenv(process_exit.COLLECT_ENV, raising=False)
    else:
        monkeypatch.setenv(process_exit.COLLECT_ENV, collect)
    report, marker = tmp_path / "report.json", tmp_path / "collected"
    subprocess.run([sys.executable, "-P", "-c", _PROBE, str(PACKAGE_DIR), str(report), str(marker)], check=True)
    return json.loads(report.read_text()), marker


def test_exit_freezes_the_heap_after_the_later_handlers_and_skips_the_final_collection(tmp_path, monkeypatch):
    seen, marker = _exit(tmp_path, monkeypatch, None)
    assert seen["installed"] and seen["again"]
    # Handlers registered after install() (Dagster's, the instance's) ran on an unfrozen heap;
    # the earlier ones ran after the freeze, and still ran.
    assert seen["after_install"] == 0
    assert seen["before_install"] > 0
    # The cycle alive at exit was not collected by finalization.
    assert not marker.exists()


@pytest.mark.parametrize("value", ["1", "true", "YES"])
def test_mlops_exit_collect_keeps_the_full_collection(tmp_path, monkeypatch, value):
    seen, marker = _exit(tmp_path, monkeypatch, value)
    assert seen["installed"] is False and seen["before_install"] == 0
    assert marker.read_text() == "collected"
