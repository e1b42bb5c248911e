"""One botocore loader per data path for every botocore session of this process.

botocore parses a service's JSON model once per *session* (each session has its own loader and
its cache): SageMaker's model is 3 MB (about 0.08 s), the endpoint list about 0.04 s. The code
location makes sessions in many places (the aws resource's ``boto_session()``, the local service's
models, the offline session the SDK builds with), and the SageMaker SDK makes its own that we cannot
reach (one at ``import sagemaker`` for JumpStart, one from boto3's default session while it builds
a definition, and a bare loader for each image URI it resolves). A cold definition build parsed SageMaker's model 5 times and the endpoint list 7
times: 0.7 s of a 2.1 s build (``bench/e2e.py``).

``share()`` makes botocore's ``create_loader`` return the one loader of its data path in this
process: the lazily-created ``data_loader`` of every botocore session (including sessions created
by libraries) and the loaders the SDK makes itself. Nothing else of a session is
shared: its credentials, region, config and event handlers stay its own. A loader's models are
read-only once loaded, as they are for the many clients of a single session. A different
``data_path`` (``AWS_DATA_PATH``, a profile's ``data_path``) gets its own loader, and it is read
once the profile is set, so a missing profile still fails where the session is made, naming it.
"""

from __future__ import annotations

import threading

import botocore.loaders
import botocore.session

_create_loader = botocore.loaders.create_loader
_LOADERS: dict[str | None, botocore.loaders.Loader] = {}
_LOCK = threading.Lock()


class _SearchPaths(list):
    """A loader's search paths, each listed once: every ``boto3.Session`` appends its resource
    models' folder to its loader's paths, which would grow a shared loader's list per session."""

    def append(self, path: str) -> None:
        if path not in self:
            super().append(path)


def shared_loader(data_path: str | None = None) -> botocore.loaders.Loader:
    """This process's loader for ``data_path`` (botocore's ``create_loader``, made once)."""
    with _LOCK:
        loader = _LOADERS.get(data_path)
        if loader is None:
            paths = _create_loader(data_path).search_paths  # botocore's reading of data_path
            loader = botocore.loaders.Loader(
                extra_search_paths=_SearchPaths(dict.fromkeys(paths)), include_default_search_paths=False
            )
            _LOADERS[data_path] = loader
        return loader


def share() -> None:
    """Loaders made in this process from now on, through ``create_loader``, are the shared ones
    (idempotent): every botocore session's (``botocore.session`` imports the name) and the SDK's
    own (``sagemaker.utils`` makes one per image URI it resolves, parsing the endpoint list again)."""
    botocore.loaders.create_loader = shared_loader
    botocore.session.create_loader = shared_loader
