"""``python -m mlops_dagster.approve``: run the approve_model job for one model package version.

`make approve VERSION=3 COMMENT="why" [STATUS=Rejected]` calls it. The values arrive as data
(arguments, or the APPROVE_* environment variables the Makefile exports) and the run config is
built as a dict: no comment is ever pasted into a shell line or a YAML document, so quotes,
``$(...)``, backticks, ``#`` or ``{a: b}`` are stored verbatim as the approval description.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dagster import ExecuteInProcessResult

USAGE = "usage: make approve VERSION=<model package version> [COMMENT=...] [STATUS=Approved|Rejected]"
# SageMaker's limit for UpdateModelPackage's ApprovalDescription.
MAX_COMMENT = 1024


def run_config(version: str, status: str, comment: str) -> dict:
    """The approve_model job's run config, as data."""
    return {
        "ops": {"approve_model_package": {"config": {"model_package": version, "status": status, "comment": comment}}}
    }


def parse(argv: Sequence[str], env: Mapping[str, str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m mlops_dagster.approve",
        description="Approve or reject a registered model package (defaults come from APPROVE_VERSION, "
        "APPROVE_COMMENT and APPROVE_STATUS).",
    )
    parser.add_argument("version", nargs="?", default=env.get("APPROVE_VERSION", ""),
                        help="the package's version number in the group, or its ARN")  # fmt: skip
    parser.add_argument("--comment", default=env.get("APPROVE_COMMENT", ""), help="why (stored verbatim)")
    parser.add_argument("--status", default=env.get("APPROVE_STATUS", ""), help="Approved (default) or Rejected")
    args = parser.parse_args(argv)
    args.version = args.version.strip()
    args.status = args.status.strip() or "Approved"
    return args


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv, os.environ if env is None else env)
    if not args.version:
        print(USAGE, file=sys.stderr)
        return 2
    if len(args.comment) > MAX_COMMENT:
        print(f"COMMENT has {len(args.comment)} characters: SageMaker stores at most {MAX_COMMENT}", file=sys.stderr)
        return 2
    # Imported here so a usage error answers at once, without loading the code location.
    from dagster import DagsterInstance

    from . import defs

    job = defs.resolve_job_def("approve_model")
    with DagsterInstance.get() as instance:
        result = job.execute_in_process(
            run_config=run_config(args.version, args.status, args.comment), instance=instance, raise_on_error=False
        )
    if not result.success:
        print(f"approve_model failed (run {result.run_id}): {failure_reason(result)}", file=sys.stderr)
        return 1
    return 0


def failure_reason(result: ExecuteInProcessResult) -> str:
    """The step failure's own message (a Failure's description, or the error), not its traceback."""
    for event in result.all_events:
        if event.event_type_value == "STEP_FAILURE":
            data = event.step_failure_data
            if data.user_failure_data and data.user_failure_data.description:
                return data.user_failure_data.description
            error = data.error.cause or data.error if data.error else None
            if error is not None:
                return error.message.strip()
    return "see the errors above"


if __name__ == "__main__":
    sys.exit(main())
