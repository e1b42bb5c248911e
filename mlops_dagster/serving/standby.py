"""A standby endpoint server: started while a pipeline trains, it imports the serving stack and the
model's libraries (numpy, pandas, scikit-learn, uvicorn: about 1.3 s of a 2-core machine's time)
ahead of the deploy, and becomes an environment's server when ``process`` starts one.

    $MLOPS_HOME/endpoints/standby.lock   held by the standby while it lives unadopted (one at a time)
    $MLOPS_HOME/endpoints/standby.sock   the adoption socket (mode 0600), there once the imports are done
    $MLOPS_HOME/endpoints/standby.log    what the standby printed before it was adopted

``process._start`` adopts it: over the Unix socket it passes the listening socket it bound (as
SCM_RIGHTS), the server's arguments and its environment variables, and gets the standby's pid back;
from then on the standby runs ``app.main`` exactly as a launched server does (the arguments name the
environment's token file, models folder and log). Only a process of the same user can adopt it (the
socket's mode and SO_PEERCRED). Anything that goes wrong before the answer makes the caller start a
server as before; a standby nobody adopts within ``IDLE_SECONDS`` exits.

Locally this is what SageMaker's warm pools are to training: capacity provisioned before it is asked
for. The backend's resource starts one (``LocalSageMaker.prepare_hosting``) when a run that will
deploy an endpoint starts (or, for a job's run that names no asset selection, when it starts its
pipeline execution). It imports at the lowest CPU priority (idle_core.py): the pipeline's jobs come
first, and a server start that waits for it raises it back.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import struct
import subprocess
import time
from pathlib import Path
from typing import Any

from . import idle_core

IDLE_SECONDS = 60.0  # a run whose training outlasts this starts its server the usual way
ADOPT_TIMEOUT_SECONDS = 5.0
READY_WAIT_SECONDS = 30.0  # how long a caller waits for a standby that is still importing
LOCK, SOCKET, LOG = "standby.lock", "standby.sock", "standby.log"
HURRY = "standby.hurry"  # created by a caller that waits for it: import now, not once a core is idle
GO = b"go"
_MAX_MESSAGE = 1 << 20  # arguments and environment variables


def start(directory: Path, idle_seconds: float = IDLE_SECONDS) -> int | None:
    """Start a standby server for the endpoints under ``directory`` unless one is alive or
    starting; the pid of the one started, else None."""
    from .process import bootstrap, remember_child  # here: process imports this module

    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / LOCK, "a") as lock:
        if not _lock_now(lock):
            return None  # a standby is starting or waiting
        (directory / HURRY).unlink(missing_ok=True)  # an earlier caller's
        # The standby inherits the locked file: the lock is held from now until it stops waiting.
        args = ["--directory", str(directory), "--idle-seconds", str(idle_seconds), "--lock-fd", str(lock.fileno())]
        with open(directory / LOG, "ab") as out:
            proc = subprocess.Popen(
                [*bootstrap("standby", "standby_main"), *args],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                pass_fds=(lock.fileno(),),
                start_new_session=True,  # as a launched server: outlives the caller
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
    remember_child(proc)
    return proc.pid


def _lock_now(lock, tries: int = 3) -> bool:
    """Take the standby lock unless a standby holds it. ``waiting`` (the gateway's check every few
    seconds) holds it for a moment too: a refusal is tried again before it counts."""
    for attempt in range(tries):
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if attempt + 1 < tries:
                time.sleep(0.01)
    return False


def waiting(directory: Path) -> bool:
    """True while a standby is starting or waiting for adoption."""
    try:
        lock = open(directory / LOCK, "a")
    except FileNotFoundError:
        return False  # no folder (none yet, or wiped): no standby
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(lock, fcntl.LOCK_UN)
        return False


def adopt(directory: Path, listening: socket.socket, argv: list[str]) -> int | None:
    """Hand ``listening`` and ``argv`` (app.main's arguments, without --fd) to the waiting standby;
    its pid, or None if there is none or it did not answer (then start a server instead)."""
    path = directory / SOCKET
    if not path.exists() and not _ready_soon(directory):
        return None
    message = json.dumps({"argv": argv, "env": {**os.environ, "PYTHONUNBUFFERED": "1"}}).encode()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(ADOPT_TIMEOUT_SECONDS)
        try:
            conn.connect(str(path))
            socket.send_fds(conn, [struct.pack("!I", len(message)), message], [listening.fileno()])
            answer = conn.recv(64).decode(errors="replace").split()
            if len(answer) != 2 or answer[0] != "adopted" or not answer[1].isdigit():
                return None
            # Without this the standby does not serve (and waits on): never two servers on one socket.
            conn.sendall(GO)
        except OSError:
            return None
    return int(answer[1])


def _ready_soon(directory: Path) -> bool:
    """A standby that is starting: tell it to import now and wait for its socket (its imports are
    what a new server would do anyway); False when there is none or it went away."""
    if not waiting(directory):
        return False
    (directory / HURRY).touch()
    deadline = time.monotonic() + READY_WAIT_SECONDS
    while time.monotonic() < deadline:
        if (directory / SOCKET).exists():
            return True
        if not waiting(directory):
            return False
        time.sleep(0.02)
    return False


# --- the standby process ---------------------------------------------------------------------


def standby_main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="A standby local endpoint server.")
    parser.add_argument("--directory", type=Path, required=True)
    parser.add_argument("--idle-seconds", type=float, default=IDLE_SECONDS)
    parser.add_argument("--lock-fd", type=int, required=True, help="standby.lock, locked by start()")
    args = parser.parse_args(argv)
    with open(args.lock_fd, "a"):  # closing it releases the lock: another standby may start
        # The pipeline's running step comes first, unless a server start already waits for this one.
        started = time.monotonic()
        with idle_core.lowered(hurried=(args.directory / HURRY).exists) as how:
            _preload()
        print(f"standby (pid {os.getpid()}): imports done in {time.monotonic() - started:.2f} s, {how}", flush=True)
        adopted = _wait_for_adoption(args.directory, args.idle_seconds)
    if adopted is None:
        print(f"standby (pid {os.getpid()}): not adopted within {args.idle_seconds:g} s, exiting", flush=True)
        return
    server_argv, env, fd = adopted
    os.environ.clear()
    os.environ.update(env)
    from .app import main

    main([*server_argv, "--fd", str(fd)])


def _preload() -> None:
    """What a server imports to start and to load the first model (model_fn unpickles a forest)."""
    import joblib  # noqa: F401
    import pandas  # noqa: F401
    import sklearn.ensemble  # noqa: F401
    import uvicorn  # noqa: F401

    from . import app  # noqa: F401


def _wait_for_adoption(directory: Path, idle_seconds: float) -> tuple[list[str], dict[str, str], int] | None:
    path = directory / SOCKET
    path.unlink(missing_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    bound = directory / f".{os.getpid()}"  # no longer than SOCKET: AF_UNIX paths are short
    previous = os.umask(0o177)  # the socket file is created 0600: only this user connects
    try:
        listener.bind(str(bound))
    finally:
        os.umask(previous)
    listener.listen(4)
    os.replace(bound, path)  # named once it listens: a caller that sees it can connect
    listener.settimeout(idle_seconds)
    try:
        while True:
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                return None
            with conn:
                adopted = _receive(conn)
                if adopted is not None and _confirmed(conn):
                    return adopted
                if adopted is not None:
                    os.close(adopted[2])  # the caller gave up: it starts a server of its own
    finally:
        listener.close()
        path.unlink(missing_ok=True)


def _confirmed(conn: socket.socket) -> bool:
    """Our pid out, the caller's go-ahead back (it may have timed out and started its own server)."""
    with contextlib.suppress(OSError):
        conn.sendall(f"adopted {os.getpid()}".encode())
        return conn.recv(len(GO)) == GO
    return False


def _receive(conn: socket.socket) -> tuple[list[str], dict[str, str], int] | None:
    """One adoption request from a process of this user; None for anything else (it is ignored)."""
    conn.settimeout(ADOPT_TIMEOUT_SECONDS)
    fds: list[int] = []
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError, AttributeError, struct.error):
        uid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))[1]
        if uid != os.getuid():
            return None
        data, fds, _, _ = socket.recv_fds(conn, _MAX_MESSAGE, 1)
        size = struct.unpack("!I", data[:4])[0]
        while len(data) < 4 + size:
            chunk = conn.recv(_MAX_MESSAGE)
            if not chunk:
                raise ValueError("truncated adoption request")
            data += chunk
        request: dict[str, Any] = json.loads(data[4 : 4 + size])
        argv, env = request["argv"], request["env"]
        if (
            len(fds) == 1
            and isinstance(argv, list) and all(isinstance(a, str) for a in argv)
            and isinstance(env, dict) and all(isinstance(v, str) for v in env.values())
        ):  # fmt: skip
            return argv, env, fds.pop()
    for fd in fds:  # a request we do not take: its descriptors are not kept open
        os.close(fd)
    return None
