"""`make approve`: what a user types in VERSION, COMMENT and STATUS is data, stored verbatim.

These run the real Makefile target (make -> python -m mlops_dagster.approve -> approve_model)
in a fresh $MLOPS_HOME with one registered model package, without reinstalling the venv.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
GROUP = "mlops-pipeline-models"
USAGE = "usage: make approve VERSION=<model package version> [COMMENT=...] [STATUS=Approved|Rejected]"


@pytest.fixture
def registry(mlops_home: Path, settings):
    """The local registry with version 1 of the default pipeline's group; returns its client."""
    from mlops_dagster import build_definitions

    resources = build_definitions(settings).resources
    model_uri = "s3://mlops-local/mlops/tests/model.tar.gz"
    resources["store"].put_bytes(model_uri, b"not read by an approval")
    client = resources["sagemaker"].get_client()
    client.create_model_package_group(ModelPackageGroupName=GROUP)
    client.create_model_package(
        ModelPackageGroupName=GROUP,
        ModelApprovalStatus="PendingManualApproval",
        InferenceSpecification={"Containers": [{"Image": "x", "ModelDataUrl": model_uri}],
                                "SupportedContentTypes": ["text/csv"], "SupportedResponseMIMETypes": ["text/csv"]},
    )  # fmt: skip
    return client


def make_approve(home: Path, *assignments: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`make approve NAME=value ...` as a user runs it, argument by argument (no shell here).

    ``-o .venv/.installed`` keeps make from reinstalling; BIN points at this test's venv."""
    environment = {k: v for k, v in os.environ.items() if k not in ("VERSION", "COMMENT", "STATUS", "MAKEFLAGS")}
    environment.update(MLOPS_HOME=str(home), DAGSTER_HOME=str(home / "dagster"), **(env or {}))
    command = ["make", "--no-print-directory", "-C", str(REPO), "-o", ".venv/.installed",
               f"BIN={Path(sys.executable).parent}", "approve", *assignments]  # fmt: skip
    return subprocess.run(command, env=environment, capture_output=True, text=True, timeout=600)


def package(client) -> dict:
    [summary] = client.list_model_packages(ModelPackageGroupName=GROUP)["ModelPackageSummaryList"]
    return client.describe_model_package(ModelPackageName=summary["ModelPackageArn"])


def hostile_comments(tmp_path: Path) -> dict[str, str]:
    """Comments that broke or hijacked the old shell/YAML recipe; each would create a file there."""
    mark = tmp_path / "pwned"
    return {
        "quotes": "it's \"fine\": reviewed by O'Brien",
        "shell": f"$(touch {mark}-1) `touch {mark}-2` ; touch {mark}-3 # && rm -rf {mark}-none $$HOME",
        "quote escape": f"'; touch {mark}-4; echo '",
        "make function": f"$(shell touch {mark}-5)",
        "yaml": '{a: b} [x, y] # not a comment &anchor *alias !tag %d | > - ? @ \\n \\" ',
    }


def test_comment_is_stored_verbatim_and_never_run(mlops_home: Path, registry, tmp_path: Path):
    # All of them in one comment, one `make approve` (each costs seconds): any shell, make or YAML
    # step that read the comment would change it (quotes, `$`, `#`...), so equality checks them all.
    comments = hostile_comments(tmp_path)
    comment = " | ".join(comments[case] for case in ("shell", "make function", "quote escape", "quotes", "yaml"))
    result = make_approve(mlops_home, "VERSION=1", f"COMMENT={comment}")
    assert result.returncode == 0, result.stdout + result.stderr
    stored = package(registry)
    assert stored["ApprovalDescription"] == comment
    assert stored["ModelApprovalStatus"] == "Approved"
    assert sorted(p.name for p in tmp_path.glob("pwned*")) == []


def test_comment_from_the_environment_and_status(mlops_home: Path, registry, tmp_path: Path):
    comment = f'worse on outliers; `touch {tmp_path}/pwned-env` "$(id)"'
    result = make_approve(mlops_home, "VERSION= 1 ", "STATUS=Rejected", env={"COMMENT": comment})
    assert result.returncode == 0, result.stdout + result.stderr
    stored = package(registry)
    assert (stored["ModelApprovalStatus"], stored["ApprovalDescription"]) == ("Rejected", comment)
    assert not list(tmp_path.glob("pwned*"))


def test_missing_version_prints_the_usage(mlops_home: Path, registry):
    result = make_approve(mlops_home, "COMMENT=why")
    assert result.returncode == 2
    assert USAGE in result.stdout + result.stderr
    assert package(registry)["ModelApprovalStatus"] == "PendingManualApproval"


def test_unknown_version_fails_with_the_reason(mlops_home: Path, registry):
    result = make_approve(mlops_home, "VERSION=7", "COMMENT=x")
    assert result.returncode != 0
    assert "approve_model failed" in result.stderr
    assert "model package group mlops-pipeline-models has no version 7 (versions: [1])" in result.stderr
    assert package(registry)["ModelApprovalStatus"] == "PendingManualApproval"


def test_main_rejects_missing_version_and_long_comment(capsys):
    from mlops_dagster.approve import main

    assert main([], {}) == 2
    assert USAGE in capsys.readouterr().err
    assert main(["1"], {"APPROVE_COMMENT": "x" * 1025}) == 2
    assert "COMMENT has 1025 characters: SageMaker stores at most 1024" in capsys.readouterr().err


def test_run_config_is_data():
    from mlops_dagster.approve import run_config

    comment = "a \"b\" 'c' {d: e} #f"
    assert run_config("3", "Approved", comment) == {
        "ops": {"approve_model_package": {"config": {"model_package": "3", "status": "Approved", "comment": comment}}}
    }


def test_the_approve_op_refuses_a_comment_sagemaker_cannot_store():
    """The UI's launchpad reaches the op without make approve: its config refuses the same."""
    from pydantic import ValidationError

    from mlops_dagster.assets.registry import ApprovalConfig

    assert ApprovalConfig(model_package="1", comment="x" * 1024).comment == "x" * 1024
    with pytest.raises(ValidationError, match="comment"):
        ApprovalConfig(model_package="1", comment="x" * 1025)
