"""A job's process, started before its job: it imports the script's own top-level imports, then
waits to be given the job (see ``spares``).

    python spare_runner.py <control-fd> <namespace 0|1> <stage> <module>...

Started by the execution's worker with the container's environment (no SM_* yet), in a session of
its own, in the job's private user and mount namespace when jobs get one (entered here, before any
import starts a thread, which would make ``unshare`` fail). It imports each module in order, sends
``ready`` on the control socket and waits for ``go``: a JSON message with the job's command,
working folder, environment and /opt/ml, and the job log's descriptor. Then it becomes what
``python <script> <args>`` would be: the environment replaced, /opt/ml bound, the log on stdout
and stderr, ``sys.argv``, ``sys.path[0]`` (the script's folder) and PYTHONPATH's entries set, and
the script run as ``__main__``; an uncaught exception prints its traceback from the script's own
frame and exits 1, as the interpreter does. If the control socket closes first, it exits 0.

It imports only the standard library (and the launcher, for the namespace) before the modules it
was told to, and takes its own folder off ``sys.path`` first, so nothing of this project is
importable by the script.
"""

import sys

_AT_START = {name.partition(".")[0] for name in sys.modules}  # what the interpreter loaded itself

import importlib  # noqa: E402 - after the snapshot: what this runner adds counts as preloaded
import importlib.machinery  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import types  # noqa: E402

import opt_ml_launcher as launcher  # noqa: E402

del sys.modules["opt_ml_launcher"], sys.path[0]  # the script must not import this folder's modules

MAX_MESSAGE = 1 << 20
READY = b"ready "  # then the JSON list of the top-level modules it loaded


def _receive(control: socket.socket) -> tuple[dict | None, int | None]:
    """The go message and the log descriptor; (None, None) when the worker closed the socket."""
    data, fds, _flags, _address = socket.recv_fds(control, MAX_MESSAGE, 1)
    if not data:
        return None, None
    return json.loads(data), (fds[0] if fds else None)


def _preload(modules: list[str]) -> list[str]:
    """Import ``modules``; every top-level module loaded since the interpreter started (this
    runner's own, and the libraries' dependencies): what a script's folder must not shadow."""
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - the script's own import of it raises this again, in its log
            continue
    return sorted({name.partition(".")[0] for name in sys.modules} - _AT_START)


def _become(message: dict, log_fd: int, libc: object) -> str:
    """Take on the job: everything ``python <script>`` gets at its start; the script's path."""
    os.environ.clear()
    os.environ.update(message["env"])
    if "tempfile" in sys.modules:
        sys.modules["tempfile"].tempdir = None  # TMPDIR is the job's now
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(log_fd, 1)  # first: a failure below is the job's, in its log
    os.dup2(log_fd, 2)
    os.close(log_fd)
    if message["host_ml"] is not None:
        launcher.bind_ml(libc, message["host_ml"])
    os.chdir(message["cwd"])
    script, *_args = message["argv"]
    path = os.path.abspath(script)
    sys.argv = list(message["argv"])
    # As the interpreter reads PYTHONPATH: entries made absolute, an empty one the working folder.
    pythonpath = message["env"].get("PYTHONPATH")
    extra = [os.path.abspath(entry) for entry in pythonpath.split(os.pathsep)] if pythonpath else []
    sys.path[0:0] = [os.path.dirname(os.path.realpath(path)), *extra]
    return path


def _run_main(path: str) -> int:
    """Run the script as ``__main__``, as the interpreter runs a script file."""
    try:
        with io.open_code(path) as source:
            code = compile(source.read(), path, "exec")
    except SyntaxError as exc:  # printed as the interpreter prints a script it cannot compile
        sys.excepthook(type(exc), exc.with_traceback(None), None)
        return 1
    main = types.ModuleType("__main__")
    main.__file__ = path
    main.__cached__ = None
    main.__loader__ = importlib.machinery.SourceFileLoader("__main__", path)
    main.__builtins__ = __builtins__
    sys.modules["__main__"] = main
    try:
        exec(code, main.__dict__)
    except SystemExit:
        raise
    except BaseException as exc:  # noqa: BLE001 - reported as the interpreter reports it, then exit 1
        trace = exc.__traceback__
        while trace is not None and trace.tb_frame.f_code.co_filename != path:
            trace = trace.tb_next
        exc = exc.with_traceback(trace or exc.__traceback__)  # what the hook prints
        sys.excepthook(type(exc), exc, exc.__traceback__)
        if isinstance(exc, KeyboardInterrupt):  # the interpreter then ends itself with SIGINT
            sys.stdout.flush()
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)
        return 1
    return 0


def main(argv: list[str]) -> int:
    control_fd, namespace, stage, *modules = argv
    control = socket.socket(fileno=int(control_fd))
    libc = None
    if namespace == "1":
        try:
            libc = launcher.libc_handle()
            launcher.enter_namespace(libc)
            launcher.cover_opt(libc, stage)
        except OSError as exc:
            print(f"{launcher.SETUP_FAILED_PREFIX}: {exc}", file=sys.stderr)
            return launcher.SETUP_FAILED
    loaded = _preload(modules)
    control.sendall(READY + json.dumps(loaded).encode())
    message, log_fd = _receive(control)
    control.close()
    if message is None or log_fd is None:
        return 0
    try:
        path = _become(message, log_fd, libc)
    except OSError as exc:  # the bind on /opt/ml or the job's folder: as the launcher reports it
        print(f"{launcher.SETUP_FAILED_PREFIX}: {exc}", file=sys.stderr)
        return launcher.SETUP_FAILED
    return _run_main(path)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
