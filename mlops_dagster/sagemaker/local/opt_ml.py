"""A job's own ``/opt/ml``: its work folder, seen at the container's path.

Public SageMaker scripts read ``/opt/ml/processing/input/...`` and write ``/opt/ml/model``
literally. On Linux a local job therefore runs in a private mount namespace (inside an
unprivileged user namespace, so no root is needed) where its ``<work_dir>/opt/ml`` is bound on
``/opt/ml``: the script sees exactly the container's paths, and its environment and arguments say
``/opt/ml/...`` as the toolkit's do. Nothing changes on the host: ``/opt`` is covered, in the
namespace only, by a tmpfs holding bind mounts of the host's ``/opt`` entries plus ``ml`` (the
host's ``/opt/ml`` is never created or written; if it exists it is covered by the bind).

How the mode is chosen (``job_mode``), once per process and cached:
- ``MLOPS_LOCAL_OPT_ML=namespace`` forces the namespace (a job fails with the reason when this
  machine cannot make one), ``remap`` forces the old remapping, ``auto`` (the default) probes:
  it runs the launcher once with ``--check`` (one interpreter start, tens of ms) and uses the
  namespace when the bind worked. The probe fails on macOS and Windows, without ``/opt``, with user
  namespaces disabled (``kernel.unprivileged_userns_clone=0``, ``user.max_user_namespaces=0``,
  AppArmor's ``apparmor_restrict_unprivileged_userns``) or under a seccomp filter that forbids
  ``unshare`` (Docker's default profile).
- In ``remap`` mode ``/opt/ml`` paths in arguments and environment variables are rewritten to the
  work folder (see jobs.py) and a script that touches a literal ``/opt/ml`` path fails with a
  FailureReason naming that path and what to do (``literal_path_failure``).

Why a Python launcher (``opt_ml_launcher``) rather than the ``unshare``/``mount`` programs: the
namespace, the id maps and the mounts are a handful of system calls made by the job's own
process, which then ``exec``s the script: no extra process stands between the job runner and the script, so signals sent to
the job's process group reach the script, its exit code is the job's, and its output goes to the
job's log, exactly as without a namespace. It needs only the standard library (it runs with
``python -I -S`` before the script's interpreter replaces it) and no util-linux version.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
import sys
import tempfile

from mlops_dagster.sagemaker.local import opt_ml_launcher
from mlops_dagster.sagemaker.local.opt_ml_launcher import MARKER, OPT_ML, SETUP_FAILED, SETUP_FAILED_PREFIX

__all__ = ["OPT_ML", "SETUP_FAILED", "SETUP_FAILED_PREFIX", "job_mode", "launcher_command", "literal_path_failure", "on_host"]

MODE_VARIABLE = "MLOPS_LOCAL_OPT_ML"
MODES = ("auto", "namespace", "remap")
PROBE_TIMEOUT_SECONDS = 30


class ModeError(Exception):
    """MLOPS_LOCAL_OPT_ML has a value this module does not know; the message says which."""


# --------------------------------------------------------------------------- choosing the mode


def job_mode(env: dict[str, str] | None = None) -> tuple[bool, str]:
    """(use the namespace, why not when it is not used): the setting, else the cached probe."""
    env = os.environ if env is None else env
    wanted = (env.get(MODE_VARIABLE) or "auto").strip().lower()
    if wanted not in MODES:
        raise ModeError(f"{MODE_VARIABLE}={env.get(MODE_VARIABLE)!r} is not one of {', '.join(MODES)}")
    if wanted == "remap":
        return False, f"{MODE_VARIABLE}=remap"
    works, reason = probe()
    if wanted == "namespace" and not works:
        raise ModeError(f"{MODE_VARIABLE}=namespace, but this machine cannot bind /opt/ml for a job: {reason}")
    return works, reason


@functools.cache
def probe() -> tuple[bool, str]:
    """(True, "") when a job's folder can be bound on /opt/ml here, else (False, why not)."""
    if not sys.platform.startswith("linux"):
        return False, f"mount namespaces are Linux's ({sys.platform} has none)"
    with tempfile.TemporaryDirectory(prefix="mlops-opt-ml-probe-") as scratch:
        ml, stage = os.path.join(scratch, "ml"), os.path.join(scratch, "stage")
        os.mkdir(ml)
        os.mkdir(stage)
        with open(os.path.join(ml, MARKER), "w"):
            pass
        try:
            proc = subprocess.run(
                launcher_command(ml, stage, "/", ["--check"]),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=PROBE_TIMEOUT_SECONDS,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return False, f"the namespace probe could not run: {exc}"
        if proc.returncode != 0:
            lines = (proc.stderr or proc.stdout).strip().splitlines()
            return False, lines[-1] if lines else f"the namespace probe exited with {proc.returncode}"
        return True, ""


def launcher_command(host_ml: str, stage: str, cwd: str, command: list[str]) -> list[str]:
    """The command that runs ``command`` in ``cwd`` with ``host_ml`` bound on /opt/ml.

    ``stage`` is an empty folder private to the job (the tmpfs for /opt is built there).
    ``command == ["--check"]`` only checks that the bind works.
    """
    return [sys.executable, "-I", "-S", os.path.abspath(opt_ml_launcher.__file__), host_ml, stage, cwd, "--", *command]


def on_host(value: str, work_dir: object) -> str:
    """A container path as it is on the host: /opt/ml/... -> <work_dir>/opt/ml/...; anything else
    unchanged (remap mode's rewriting, and where a namespace's /opt/ml lives)."""
    if value == OPT_ML or value.startswith(OPT_ML + "/"):
        return f"{work_dir}{value}"
    return value


# --------------------------------------------------------------------------- remap mode's failures

# An error message naming a literal /opt/ml path, e.g. Python's
# "FileNotFoundError: [Errno 2] No such file or directory: '/opt/ml/processing/input/data/x.csv'",
# "PermissionError: [Errno 13] Permission denied: '/opt/ml'", pandas'
# "OSError: Cannot save file into a non-existent directory: '/opt/ml/processing/output'", or a shell's
# "cp: cannot create regular file '/opt/ml/model/x': No such file or directory".
_ERROR = re.compile(r"Error|Exception|No such file|Permission denied|Read-only file system|[Cc]annot")
_QUOTED = re.compile(r"(['\"])(/opt/ml(?:/.*?)?)\1")
_BARE = re.compile(r"(?<![\w/.])(/opt/ml(?:/[^\s:'\"]*)?)(?=[\s:]|$)")


def _literal_path(line: str) -> str | None:
    if not _ERROR.search(line):
        return None
    match = _QUOTED.search(line)
    if match:
        return match.group(2)
    match = _BARE.search(line)
    return match.group(1) if match else None


def literal_path_failure(output: str, host_ml: str, why: str) -> str | None:
    """The FailureReason for a script that failed on a literal /opt/ml path in remap mode, else None."""
    found = [path for path in map(_literal_path, output.splitlines()) if path]
    if not found:
        return None
    path = found[-1]
    return (
        f"AlgorithmError: the script used the container path {path}, which does not exist on this machine: "
        f"local jobs here cannot get their own /opt/ml ({why}), so the job's /opt/ml is {host_ml}. "
        "Read the paths from the job's arguments or environment (SM_MODEL_DIR, SM_CHANNEL_<NAME>, "
        "SM_OUTPUT_DATA_DIR; a processing job's LocalPaths passed as ContainerArguments), or run on Linux "
        f"with unprivileged user namespaces enabled ({MODE_VARIABLE}=auto)"
    )
