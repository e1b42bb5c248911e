"""mlops-dagster: the recipe "End-to-End MLOps with SageMaker Pipelines" as a Dagster code location."""

import warnings

from dagster import BetaWarning, PreviewWarning

# We use data versions and blocking checks on purpose; their "beta" notices only add noise.
warnings.filterwarnings("ignore", category=BetaWarning)
warnings.filterwarnings("ignore", category=PreviewWarning)

from . import instance_storage, process_exit  # noqa: E402
from .definitions import build_definitions  # noqa: E402

instance_storage.install()  # fewer fsyncs per Dagster event (see instance_storage.py)
process_exit.install()  # no collection over the whole heap at exit (see process_exit.py)

defs = build_definitions()

__all__ = ["build_definitions", "defs"]
