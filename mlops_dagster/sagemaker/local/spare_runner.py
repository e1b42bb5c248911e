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

import array
import importlib
import importlib.machinery
import io
import json
import os
import socket
import sys
import types

import opt_ml_launcher as launcher

del sys.modules["opt_ml_launcher"], sys.path[0]  # the script must not import this folder's modules

MAX_MESSAGE = 1 << 20


def _receive(control: socket.socket) -> tuple[dict | None, int | None]:
    """The go message and the log descriptor; (None, None) when the worker closed the socket."""
    fds = array.array("i")
    data, ancillary, _flags, _address = control.recvmsg(MAX_MESSAGE, socket.CMSG_SPACE(fds.itemsize))
    if not data:
        return None, None
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
    return json.loads(data), (fds[0] if fds else None)


def _preload(modules: list[str]) -> None:
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - the script's own import of it raises this again, in its log
            continue


def _become(message: dict, log_fd: int, libc: object) -> str:
    """Take on the job: everything ``python <script>`` gets at its start; the script's path."""
    os.environ.clear()
    os.environ.update(message["env"])
    if "tempfile" in sys.modules:
        sys.modules["tempfile"].tempdir = None  # TMPDIR is the job's now
    if message["host_ml"] is not None:
        launcher.bind_ml(libc, message["host_ml"])
    os.chdir(message["cwd"])
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    script, *_args = message["argv"]
    path = os.path.abspath(script)
    sys.argv = list(message["argv"])
    extra = [entry for entry in message["env"].get("PYTHONPATH", "").split(os.pathsep) if entry]
    sys.path[0:0] = [os.path.dirname(os.path.realpath(path)), *extra]
    return path


def _run_main(path: str) -> int:
    """Run the script as ``__main__``, as the interpreter runs a script file."""
    with io.open_code(path) as source:
        code = compile(source.read(), path, "exec")
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
    _preload(modules)
    control.sendall(b"ready")
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
