"""Interpreter exit without finalization's walk over every live object.

When Python exits, CPython's finalization runs the cyclic garbage collector over every object still
alive. A process that has loaded Dagster, this code location and the SageMaker SDK holds about
375,000 of them, and that walk was most of the Dagster CLI's exit after a run had ended: 0.9-1.3 s
of `dagster asset materialize` on this project's machines (py-spy showed the whole exit inside
``gc_collect_main``; ``bench/e2e.py``, "CLI exit after the run").

``gc.freeze()`` as the last atexit step moves the live objects to the permanent generation, which
finalization's collections skip. What a process must do at exit still happens: files, sockets and
databases are closed by their owners (context managers, and atexit handlers such as
``instance_storage``'s, which run after this one), objects are still freed by reference counting as
modules are torn down, and the standard streams are flushed. What is skipped is collecting cycles
that are unreachable at exit: their memory goes back to the OS with the process, and CPython never
promised ``__del__`` for objects alive at exit. ``MLOPS_EXIT_COLLECT=1`` keeps the full collection.
"""

from __future__ import annotations

import atexit
import gc
import os

COLLECT_ENV = "MLOPS_EXIT_COLLECT"
_installed = False


def install() -> bool:
    """Freeze the heap at exit in this process (once); False if ``MLOPS_EXIT_COLLECT`` is set."""
    global _installed
    if os.environ.get(COLLECT_ENV, "").strip().lower() in {"1", "true", "yes"}:
        return False
    if not _installed:
        # atexit runs handlers last-registered first: handlers registered after this import
        # (Dagster's, the instance's) run before the freeze, those registered earlier after it.
        atexit.register(gc.freeze)
        _installed = True
    return True
