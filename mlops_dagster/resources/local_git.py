"""A bare git repository written with git's plumbing commands: the local backend's CodeCommit.

Plumbing (hash-object, mktree, commit-tree, update-ref) needs no work tree, no index and no
remote, so nothing is checked out and nothing touches the network. Every ``git`` runs with a
minimal environment: no system or global config (GIT_CONFIG_NOSYSTEM, GIT_CONFIG_GLOBAL), an
empty throw-away HOME, no prompts, and the author/committer given by the caller, so the user's
own git setup (hooks, signing, templates, identity) cannot change what is committed.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

ZERO_ID = "0" * 40


class GitError(RuntimeError):
    """A git command failed; the message names the repository, the command and git's stderr."""


@dataclass(frozen=True)
class CommitRequest:
    """Who commits, on which branch, with which message (fixed by config, not by the machine)."""

    branch: str = "main"
    author_name: str = "mlops-dagster"
    author_email: str = "mlops-dagster@localhost"
    message: str = "Training code from mlops-dagster"


class BareRepository:
    def __init__(self, path: Path):
        self.path = Path(path)

    def exists(self) -> bool:
        return (self.path / "HEAD").is_file() and (self.path / "objects").is_dir()

    def init(self, branch: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._git("init", "--quiet", "--bare", f"--initial-branch={branch}", str(self.path), git_dir=False)

    def branches(self) -> dict[str, str]:
        out = self._git("for-each-ref", "--format=%(refname:short) %(objectname)", "refs/heads/")
        return dict(line.split(" ", 1) for line in out.splitlines() if line)

    def head(self, branch: str) -> str | None:
        return self.branches().get(branch)

    def commit_folder(self, folder: str, files: Mapping[str, bytes], request: CommitRequest) -> tuple[str, bool]:
        """Make ``folder`` on the branch hold exactly ``files``; other paths keep their content.

        Returns (commit id, whether a new commit was made). Trees are content-addressed, so an
        unchanged folder gives the parent's tree id and no commit is made.
        """
        parent = self.head(request.branch)
        folder_tree = self._mktree(
            [f"100644 blob {self._hash_object(data)}\t{name}" for name, data in sorted(files.items())]
        )
        others = []
        if parent:
            # -z: NUL-terminated and unquoted, so any file name round-trips into mktree -z.
            entries = self._git("ls-tree", "-z", f"{parent}^{{tree}}").split("\0")
            others = [e for e in entries if e and e.split("\t", 1)[1] != folder]
        root = self._mktree([*others, f"040000 tree {folder_tree}\t{folder}"])
        if parent and self._git("rev-parse", f"{parent}^{{tree}}").strip() == root:
            return parent, False
        args = ["commit-tree", root, "-m", request.message] + (["-p", parent] if parent else [])
        commit = self._git(*args, identity=request).strip()
        # Compare-and-swap: fails instead of losing a commit if the branch moved meanwhile.
        self._git("update-ref", f"refs/heads/{request.branch}", commit, parent or ZERO_ID)
        return commit, True

    def _hash_object(self, data: bytes) -> str:
        return self._git("hash-object", "-w", "--stdin", input=data).strip()

    def _mktree(self, entries: list[str]) -> str:
        return self._git("mktree", "-z", input="".join(e + "\0" for e in entries).encode()).strip()

    def _git(
        self, *args: str, input: bytes | None = None, identity: CommitRequest | None = None, git_dir: bool = True
    ) -> str:
        with tempfile.TemporaryDirectory(prefix="mlops-git-home-") as home:
            env = {
                "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                "HOME": home,
                "XDG_CONFIG_HOME": home,
                "GIT_CONFIG_NOSYSTEM": "1",
                "GIT_CONFIG_GLOBAL": os.devnull,
                "GIT_TERMINAL_PROMPT": "0",
                "LC_ALL": "C",
            }
            if git_dir:
                env["GIT_DIR"] = str(self.path)
            if identity is not None:
                env.update(
                    GIT_AUTHOR_NAME=identity.author_name,
                    GIT_AUTHOR_EMAIL=identity.author_email,
                    GIT_COMMITTER_NAME=identity.author_name,
                    GIT_COMMITTER_EMAIL=identity.author_email,
                )
            try:
                done = subprocess.run(["git", *args], input=input, env=env, capture_output=True, check=False)
            except FileNotFoundError as err:
                raise GitError(
                    "git is not installed: the local backend keeps the code repository as a bare git "
                    f"repository at {self.path}"
                ) from err
        if done.returncode != 0:
            raise GitError(
                f"git {' '.join(args[:2])} in {self.path} failed ({done.returncode}): "
                + done.stderr.decode(errors="replace").strip()
            )
        return done.stdout.decode()
