"""The recipe's SageMaker Pipeline, built with the SDK v2 (``PipelineSession``).

Preprocess (processing) -> Train (scikit-learn framework container, ``training/train.py``) ->
Evaluate (processing, ``evaluation.json`` read through a PropertyFile, and the validation
predictions ``predictions.csv``) -> CheckQuality (MSE against the ``MseThreshold`` parameter, else
Fail ``MseAboveThreshold``) -> CheckModelSize (``model_size_bytes`` of ``evaluation.json`` against
``MaxModelBytes``, else Fail ``ModelTooLarge``) -> RegisterModel. The same function builds the
definition for both backends; only the boto session differs (see ``offline.py``).

RegisterModel names the model's drift baselines (``DriftCheckBaselines`` can only be set when a
package is created) at URIs fixed in the definition, ``Std:Join`` of the execution id:
``s3://{bucket}/{prefix}/{pipeline}/{execution-id}/baseline/{data,prediction}/``; the
``registered_model`` asset writes the files there (``monitoring/store.py`` says which field holds which).

Sharded preprocessing (``processing_instance_count`` N > 1): the dataset's train rows are CSV
part files under ``{InputData}train/`` (``s3_dataset`` config ``train_parts``). A Statistics step
(one instance, every part) computes the train medians into ``statistics.json``; Preprocess then
runs on N instances, the parts ``ShardedByS3Key``, validation.csv and the statistics
``FullyReplicated``, and imputes with those global medians (``preprocess.py`` says how each
instance names its output so none overwrites another). With N = 1 the definition is the recipe's.
The count is a spec field because it decides whether the Statistics step exists (the recipe's
definition stays as it was); a sharded definition also has the Integer parameter
``ProcessingInstanceCount`` (default N), so an execution can run Preprocess on another count of
instances, at most the dataset's part count (an instance without a part fails, saying so).
"""

from __future__ import annotations

import json
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import boto3
import jsonschema

from . import SDK_CONFIG  # noqa: F401  (configures the SDK before it is imported)
from .training_code import TRAINING_DIR, stage_training_code


def _validate_sdk_config_once(instance: object, schema: object, *args, **kwargs) -> None:
    """``jsonschema.validate``, where a config the SDK validated before is not validated again.

    The SDK validates its config against its whole schema (0.065 s each, mostly checking the
    schema itself) when a Session loads ``sdk_config.yaml`` and on every config lookup: four times
    during ``import sagemaker`` alone (JumpStart makes a Session) and about 60 times per build.
    A config that was valid stays valid; any other schema is validated as jsonschema does.
    """
    sdk_schema = getattr(sys.modules.get("sagemaker.config.config_schema"), "SAGEMAKER_PYTHON_SDK_CONFIG_SCHEMA", None)
    if schema is not sdk_schema or args or kwargs:
        return _jsonschema_validate(instance, schema, *args, **kwargs)
    key = json.dumps(instance, sort_keys=True, default=str)
    if key not in _VALIDATED:
        _jsonschema_validate(instance, schema)
        _VALIDATED.add(key)
    return None


_VALIDATED: set[str] = set()
_jsonschema_validate = jsonschema.validate
jsonschema.validate = _validate_sdk_config_once  # the SDK calls jsonschema.validate(config, schema)

from sagemaker import image_uris  # noqa: E402
from sagemaker.drift_check_baselines import DriftCheckBaselines  # noqa: E402
from sagemaker.inputs import TrainingInput  # noqa: E402
from sagemaker.model import Model  # noqa: E402
from sagemaker.model_metrics import MetricsSource, ModelMetrics  # noqa: E402
from sagemaker.processing import ProcessingInput, ProcessingOutput  # noqa: E402
from sagemaker.sklearn.estimator import SKLearn  # noqa: E402
from sagemaker.sklearn.processing import SKLearnProcessor  # noqa: E402
from sagemaker.workflow.condition_step import ConditionStep  # noqa: E402
from sagemaker.workflow.conditions import ConditionLessThanOrEqualTo  # noqa: E402
from sagemaker.workflow.execution_variables import ExecutionVariables  # noqa: E402
from sagemaker.workflow.fail_step import FailStep  # noqa: E402
from sagemaker.workflow.functions import Join, JsonGet  # noqa: E402
from sagemaker.workflow.model_step import ModelStep  # noqa: E402
from sagemaker.workflow.parameters import ParameterFloat, ParameterInteger, ParameterString  # noqa: E402
from sagemaker.workflow.pipeline import Pipeline  # noqa: E402
from sagemaker.workflow.pipeline_context import PipelineSession  # noqa: E402
from sagemaker.workflow.properties import PropertyFile  # noqa: E402
from sagemaker.workflow.steps import CacheConfig, ProcessingStep, TrainingStep  # noqa: E402

FRAMEWORK_VERSION = "1.2-1"
PROCESSING = "/opt/ml/processing"
APPROVAL_STATUSES = ("PendingManualApproval", "Approved", "Rejected")
# The largest model.joblib CheckModelSize lets into the registry by default. The default endpoint
# instance, ml.t2.medium, has 4 GiB; the scikit-learn serving container starts one worker per
# vCPU (2), each holding the model, beside the OS and two Python processes: 2 x 1 GiB leaves
# about 1.5 GiB of headroom.
DEFAULT_MAX_MODEL_BYTES = 1 << 30
MAX_PROCESSING_INSTANCES = 100  # SageMaker's limit for a processing job's InstanceCount
DEFAULT_STEP_CACHE = "P30D"
# Model Monitor's baseline file names (monitoring/baseline.py; not imported: it pulls pandas into the builder).
STATISTICS, CONSTRAINTS = "statistics.json", "constraints.json"


@dataclass(frozen=True)
class PipelineSpec:
    """What the pipeline definition depends on (besides the code in ``training_dir``)."""

    name: str
    bucket: str
    prefix: str
    region: str
    role_arn: str
    target: str = "medv"
    mse_threshold: float = 25.0
    max_model_bytes: int = DEFAULT_MAX_MODEL_BYTES
    train_instance_type: str = "ml.m5.large"
    processing_instance_type: str = "ml.m5.large"
    # Instances of the Preprocess step; above 1 the train data must be part files (module docstring).
    processing_instance_count: int = 1
    approval_status: str = "PendingManualApproval"
    # min_samples_leaf and max_samples are left to train.py's "auto", which bounds the model's size.
    hyperparameters: dict = field(default_factory=lambda: {"n_estimators": 100, "random_state": 42})
    training_dir: str = str(TRAINING_DIR)
    entry_point: str = "train.py"
    # The recipe's own train.py takes no hyperparameters; set False to run it unmodified.
    pass_hyperparameters: bool = True
    # SageMaker step caching of the Processing and Training steps: an execution reuses an earlier
    # one's job whose inputs, code and settings were the same within this ISO 8601 duration; None
    # runs every step every time (the recipe's definition).
    step_cache_expire_after: str | None = DEFAULT_STEP_CACHE

    @property
    def model_package_group(self) -> str:
        return f"{self.name}-models"


def build_pipeline(spec: PipelineSpec, boto_session: boto3.Session) -> Pipeline:
    with warnings.catch_warnings():
        # "Running within a PipelineSession, there will be No Wait, No Logs": that is the point.
        warnings.filterwarnings("ignore", message="Running within a PipelineSession")
        return _build_pipeline(spec, boto_session)


def _build_pipeline(spec: PipelineSpec, boto_session: boto3.Session) -> Pipeline:
    if isinstance(spec.max_model_bytes, bool) or not isinstance(spec.max_model_bytes, int) or spec.max_model_bytes <= 0:
        raise ValueError(f"max_model_bytes must be a whole number of bytes above 0, got {spec.max_model_bytes!r}")
    count = spec.processing_instance_count
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_PROCESSING_INSTANCES:
        raise ValueError(
            f"processing_instance_count must be a whole number from 1 to {MAX_PROCESSING_INSTANCES} "
            f"(SageMaker's limit), got {count!r}"
        )
    if spec.approval_status not in APPROVAL_STATUSES:
        raise ValueError(f"approval_status {spec.approval_status!r} is not one of {APPROVAL_STATUSES}")
    for script in ("preprocess.py", "evaluate.py"):
        if not (Path(spec.training_dir) / script).is_file():
            raise FileNotFoundError(f"training script {Path(spec.training_dir) / script} does not exist")
    source = stage_training_code(spec.training_dir, spec.entry_point)
    entry_point = Path(spec.entry_point).name
    if not (source / entry_point).is_file():
        raise FileNotFoundError(f"training entry point {Path(spec.training_dir) / spec.entry_point} does not exist")

    session = PipelineSession(
        boto_session=boto_session, default_bucket=spec.bucket, default_bucket_prefix=spec.prefix or None
    )
    input_data = ParameterString("InputData", default_value=f"s3://{spec.bucket}/{spec.prefix}/data/")
    mse_threshold = ParameterFloat("MseThreshold", default_value=float(spec.mse_threshold))
    max_model_bytes = ParameterInteger("MaxModelBytes", default_value=int(spec.max_model_bytes))
    train_instance = ParameterString("TrainInstanceType", default_value=spec.train_instance_type)
    processing_instance = ParameterString("ProcessingInstanceType", default_value=spec.processing_instance_type)
    approval = ParameterString("ModelApprovalStatus", default_value=spec.approval_status)
    cache = (
        CacheConfig(enable_caching=True, expire_after=spec.step_cache_expire_after)
        if spec.step_cache_expire_after
        else None
    )

    def processor(base: str, instance_count: int | ParameterInteger = 1) -> SKLearnProcessor:
        return SKLearnProcessor(
            framework_version=FRAMEWORK_VERSION,
            role=spec.role_arn,
            instance_type=processing_instance,
            instance_count=instance_count,
            base_job_name=f"{spec.name}-{base}",
            sagemaker_session=session,
        )

    sharding: list[ParameterInteger] = []
    if count == 1:
        preprocess = ProcessingStep(
            name="Preprocess",
            cache_config=cache,
            step_args=processor("preprocess").run(
                code=str(source / "preprocess.py"),
                inputs=[ProcessingInput(source=input_data, destination=f"{PROCESSING}/input")],
                outputs=_split_outputs(),
                arguments=["--input-dir", f"{PROCESSING}/input", "--output-dir", PROCESSING, "--target", spec.target],
            ),
        )
        first_steps = [preprocess]
    else:
        # An execution may run Preprocess on another count (the step graph is the same for any).
        instances = ParameterInteger("ProcessingInstanceCount", default_value=count)
        first_steps = _sharded_preprocess(spec, source, input_data, instances, processor, cache)
        preprocess = first_steps[-1]
        sharding = [instances]
    outputs = preprocess.properties.ProcessingOutputConfig.Outputs

    hyperparameters = {"target": spec.target, **spec.hyperparameters} if spec.pass_hyperparameters else {}
    estimator = SKLearn(
        entry_point=entry_point,
        source_dir=str(source),
        framework_version=FRAMEWORK_VERSION,
        py_version="py3",
        instance_type=train_instance,
        instance_count=1,
        role=spec.role_arn,
        base_job_name=f"{spec.name}-train",
        hyperparameters=hyperparameters,
        output_path=f"s3://{spec.bucket}/{_join(spec.prefix, spec.name, 'training')}",
        # Without this the SDK puts sourcedir.tar.gz at the bucket root when output_path is set.
        code_location=f"s3://{spec.bucket}/{spec.prefix}" if spec.prefix else None,
        # No Debugger/Profiler rules: they add processing jobs and S3 paths the recipe does not use.
        disable_profiler=True,
        debugger_hook_config=False,
        sagemaker_session=session,
    )
    train = TrainingStep(
        name="Train",
        cache_config=cache,
        step_args=estimator.fit(
            inputs={
                "training": TrainingInput(outputs["train"].S3Output.S3Uri, content_type="text/csv"),
                "validation": TrainingInput(outputs["validation"].S3Output.S3Uri, content_type="text/csv"),
            }
        ),
    )
    model_data = train.properties.ModelArtifacts.S3ModelArtifacts

    report = PropertyFile(name="EvaluationReport", output_name="evaluation", path="evaluation.json")
    evaluate = ProcessingStep(
        name="Evaluate",
        cache_config=cache,
        step_args=processor("evaluate").run(
            code=str(source / "evaluate.py"),
            inputs=[
                ProcessingInput(source=model_data, destination=f"{PROCESSING}/model"),
                ProcessingInput(source=outputs["test"].S3Output.S3Uri, destination=f"{PROCESSING}/test"),
                ProcessingInput(source=outputs["validation"].S3Output.S3Uri, destination=f"{PROCESSING}/validation"),
            ],
            outputs=[ProcessingOutput(output_name="evaluation", source=f"{PROCESSING}/evaluation")],
            arguments=[
                "--model-dir", f"{PROCESSING}/model", "--test-dir", f"{PROCESSING}/test",
                "--validation-dir", f"{PROCESSING}/validation",
                "--output-dir", f"{PROCESSING}/evaluation", "--target", spec.target,
            ],  # fmt: skip
        ),
        property_files=[report],
    )
    evaluation_uri = Join(
        on="/", values=[evaluate.properties.ProcessingOutputConfig.Outputs["evaluation"].S3Output.S3Uri, "evaluation.json"]
    )
    mse = JsonGet(step_name=evaluate.name, property_file=report, json_path="regression_metrics.mse.value")
    model_bytes = JsonGet(step_name=evaluate.name, property_file=report, json_path="model_size_bytes")

    data_baseline = baseline_sources(spec, "data")
    prediction_baseline = baseline_sources(spec, "prediction")
    model = Model(
        image_uri=image_uris.retrieve("sklearn", spec.region, FRAMEWORK_VERSION, instance_type="ml.m5.large"),
        model_data=model_data,
        role=spec.role_arn,
        sagemaker_session=session,
    )
    register = ModelStep(
        name="RegisterModel",
        step_args=model.register(
            content_types=["text/csv", "application/json"],
            response_types=["text/csv", "application/json"],
            inference_instances=["ml.t2.medium", "ml.m5.large"],
            transform_instances=["ml.m5.large"],
            model_package_group_name=spec.model_package_group,
            approval_status=approval,
            model_metrics=ModelMetrics(
                model_statistics=MetricsSource(s3_uri=evaluation_uri, content_type="application/json"),
                model_data_statistics=data_baseline[STATISTICS],
                model_data_constraints=data_baseline[CONSTRAINTS],
            ),
            drift_check_baselines=DriftCheckBaselines(
                model_data_statistics=data_baseline[STATISTICS],
                model_data_constraints=data_baseline[CONSTRAINTS],
                model_statistics=prediction_baseline[STATISTICS],
                model_constraints=prediction_baseline[CONSTRAINTS],
            ),
        ),
    )
    too_large = FailStep(
        name="ModelTooLarge",
        error_message=Join(
            on=" ",
            values=[
                "model not registered: model.joblib is", model_bytes, "bytes, above the MaxModelBytes", max_model_bytes,
                "(more than the endpoint instance can load); bound the forest (min_samples_leaf, max_samples,",
                "n_estimators) or raise max_model_bytes with a larger inference instance",
            ],
        ),  # fmt: skip
    )
    # Nested rather than a second condition of CheckQuality: each refusal gets its own Fail step,
    # message and condition outcome (CheckModelSize: False says the model was too large).
    check_size = ConditionStep(
        name="CheckModelSize",
        conditions=[ConditionLessThanOrEqualTo(left=model_bytes, right=max_model_bytes)],
        if_steps=[register],
        else_steps=[too_large],
    )
    fail = FailStep(
        name="MseAboveThreshold",
        error_message=Join(on=" ", values=["model not registered: mse", mse, "is above the MseThreshold", mse_threshold]),
    )
    check = ConditionStep(
        name="CheckQuality",
        conditions=[ConditionLessThanOrEqualTo(left=mse, right=mse_threshold)],
        if_steps=[check_size],
        else_steps=[fail],
    )
    return Pipeline(
        name=spec.name,
        parameters=[input_data, mse_threshold, train_instance, processing_instance, approval, max_model_bytes, *sharding],
        steps=[*first_steps, train, evaluate, check],
        pipeline_experiment_config=None,
        sagemaker_session=session,
    )


def _split_outputs() -> list[ProcessingOutput]:
    return [
        ProcessingOutput(output_name=split, source=f"{PROCESSING}/{split}") for split in ("train", "validation", "test")
    ]


def _sharded_preprocess(
    spec: PipelineSpec,
    source: Path,
    input_data: ParameterString,
    instances: ParameterInteger,
    processor,
    cache: CacheConfig | None,
) -> list[ProcessingStep]:
    """Statistics (one instance, every train part) then Preprocess on the spec's instances, each
    given its shard of the parts and the global statistics (module docstring)."""
    inputs = f"{PROCESSING}/input"
    train_parts = Join(on="", values=[input_data, "train/"])  # InputData ends with "/" (s3_dataset's uri)
    statistics = ProcessingStep(
        name="Statistics",
        cache_config=cache,
        step_args=processor("statistics").run(
            code=str(source / "preprocess.py"),
            inputs=[ProcessingInput(source=train_parts, destination=f"{inputs}/train")],
            outputs=[ProcessingOutput(output_name="statistics", source=f"{PROCESSING}/statistics")],
            arguments=[
                "--mode", "statistics", "--input-dir", inputs, "--output-dir", PROCESSING, "--target", spec.target,
            ],  # fmt: skip
        ),
    )
    statistics_uri = statistics.properties.ProcessingOutputConfig.Outputs["statistics"].S3Output.S3Uri
    preprocess = ProcessingStep(
        name="Preprocess",
        cache_config=cache,
        step_args=processor("preprocess", instances).run(
            code=str(source / "preprocess.py"),
            inputs=[
                ProcessingInput(
                    source=train_parts, destination=f"{inputs}/train", s3_data_distribution_type="ShardedByS3Key"
                ),
                ProcessingInput(
                    source=Join(on="", values=[input_data, "validation.csv"]), destination=f"{inputs}/validation"
                ),
                ProcessingInput(source=statistics_uri, destination=f"{inputs}/statistics"),
            ],
            outputs=_split_outputs(),
            arguments=[
                "--mode", "transform", "--input-dir", inputs, "--output-dir", PROCESSING, "--target", spec.target,
                "--statistics", f"{inputs}/statistics/statistics.json",
                "--resource-config", "/opt/ml/config/resourceconfig.json",
            ],  # fmt: skip
        ),
    )
    return [statistics, preprocess]


def baseline_sources(spec: PipelineSpec, kind: str) -> dict[str, MetricsSource]:
    """statistics.json and constraints.json of the ``kind`` baseline ("data" or "prediction") of this
    execution: ``s3://{bucket}/{prefix}/{pipeline}/{execution-id}/baseline/{kind}/{file}``."""
    root = f"s3://{spec.bucket}/{_join(spec.prefix, spec.name)}"
    return {
        name: MetricsSource(
            s3_uri=Join(on="/", values=[root, ExecutionVariables.PIPELINE_EXECUTION_ID, "baseline", kind, name]),
            content_type="application/json",
        )
        for name in (STATISTICS, CONSTRAINTS)
    }


def _join(*parts: str) -> str:
    return "/".join(p.strip("/") for p in parts if p)
