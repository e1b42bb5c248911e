"""Run a command with a job's folder bound on /opt/ml, in a private mount namespace (see opt_ml).

    python -I -S opt_ml_launcher.py <host_ml> <stage> <cwd> -- <command...>

Run as a script before the job's own interpreter replaces it, so it imports only ``os``, ``sys``
and ``ctypes`` (each job pays for its start).
"""

import ctypes
import os
import sys

OPT_ML = "/opt/ml"
SETUP_FAILED = 125  # the exit code when the namespace could not be set up (as env(1) uses 125)
SETUP_FAILED_PREFIX = "mlops-local: cannot bind the job's folder on /opt/ml"
MARKER = "mlops-opt-ml-probe"  # the file --check looks for

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
MS_BIND = 4096
MS_MOVE = 8192
MS_REC = 16384
MS_PRIVATE = 1 << 18


def libc_handle() -> ctypes.CDLL:
    # The interpreter's own symbols include libc's (find_library would spawn ldconfig: ~100 ms).
    return ctypes.CDLL(None, use_errno=True)


def _call(what: str, result: int) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def _bytes(text: str | None) -> bytes | None:
    return None if text is None else os.fsencode(text)


def _mount(
    libc: ctypes.CDLL, source: str | None, target: str, fstype: str | None, flags: int, data: str | None
) -> None:
    what = f"mount {source or fstype} on {target}"
    _call(what, libc.mount(_bytes(source), _bytes(target), _bytes(fstype), ctypes.c_ulong(flags), _bytes(data)))


def enter_namespace(libc: ctypes.CDLL) -> None:
    """A user namespace mapping our own ids (the script keeps them), with a mount namespace."""
    uid, gid = os.getuid(), os.getgid()
    _call("unshare(CLONE_NEWUSER | CLONE_NEWNS)", libc.unshare(CLONE_NEWUSER | CLONE_NEWNS))
    with open("/proc/self/setgroups", "w") as f:  # required before an unprivileged gid_map
        f.write("deny")
    with open("/proc/self/uid_map", "w") as f:
        f.write(f"{uid} {uid} 1")
    with open("/proc/self/gid_map", "w") as f:
        f.write(f"{gid} {gid} 1")
    _mount(libc, None, "/", None, MS_REC | MS_PRIVATE, None)  # nothing we mount reaches the host


def cover_opt(libc: ctypes.CDLL, stage: str) -> None:
    """Make /opt/ml a place to bind on: nothing to do if the host has it, else /opt is covered by
    a tmpfs (built in ``stage``) holding binds of the host's /opt entries and an empty ``ml``."""
    if os.path.isdir(os.path.realpath(OPT_ML)):
        return
    opt = os.path.realpath(os.path.dirname(OPT_ML))
    if not os.path.isdir(opt):
        raise OSError(f"this machine has no {os.path.dirname(OPT_ML)} folder to put /opt/ml in")
    _mount(libc, "tmpfs", stage, "tmpfs", 0, "mode=0755")
    for entry in os.scandir(opt):
        place = os.path.join(stage, entry.name)
        if entry.is_symlink():
            os.symlink(os.readlink(entry.path), place)
            continue
        if entry.is_dir():
            os.mkdir(place)
        else:
            open(place, "w").close()
        _mount(libc, entry.path, place, None, MS_BIND | MS_REC, None)
    os.mkdir(os.path.join(stage, "ml"))
    _mount(libc, stage, opt, None, MS_MOVE, None)


def bind_ml(libc: ctypes.CDLL, host_ml: str) -> None:
    """host_ml on /opt/ml (after ``cover_opt``); the mount namespace is the process's, so a
    process that entered it before starting threads can bind from any thread later."""
    _mount(libc, host_ml, os.path.realpath(OPT_ML), None, MS_BIND | MS_REC, None)


def main(argv: list[str]) -> int:
    """launcher: <host_ml> <stage> <cwd> -- <command...> (or -- --check)."""
    if len(argv) < 5 or argv[3] != "--":
        print("usage: opt_ml_launcher.py <host_ml> <stage> <cwd> -- <command...>", file=sys.stderr)
        return 2
    host_ml, stage, cwd, _separator, *command = argv
    try:
        libc = libc_handle()
        enter_namespace(libc)
        cover_opt(libc, stage)
        bind_ml(libc, host_ml)
        os.chdir(cwd)
    except OSError as exc:
        print(f"{SETUP_FAILED_PREFIX}: {exc}", file=sys.stderr)
        return SETUP_FAILED
    if command == ["--check"]:
        seen = os.path.isfile(os.path.join(OPT_ML, MARKER))
        if not seen:
            print("mlops-local: the bind on /opt/ml did not show the job's folder", file=sys.stderr)
        return 0 if seen else SETUP_FAILED
    sys.stdout.flush()
    try:
        os.execvp(command[0], command)  # the script replaces this process: same pid, group, output
    except OSError as exc:
        print(f"mlops-local: cannot start {command[0]!r}: {exc}", file=sys.stderr)
        return 127
    return 127  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
