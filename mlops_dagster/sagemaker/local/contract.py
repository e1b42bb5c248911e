"""What a job's container sees: environment, config files and arguments, as SageMaker gives them.

Training: the scikit-learn framework container runs the sagemaker-training toolkit
(``sagemaker_training.environment.Environment``, then the script with ``to_cmd_args()`` and
``to_env_vars()``). The functions here compute the same values from the same inputs (the config
files SageMaker writes in ``/opt/ml/input/config``, the hyperparameters, the container's
environment), key for key and formatted as the toolkit formats them (strings as they are, ``None``
as "", anything else as sorted, compact JSON). tests/test_training_contract.py runs the real
toolkit against a local job's folder and compares.

Processing: what the developer guide documents for processing containers
("How Amazon SageMaker Processing Configures Your Processing Container"):
``/opt/ml/config/processingjobconfig.json`` (the request, with its defaults filled in),
``/opt/ml/config/resourceconfig.json`` (``current_host`` and ``hosts``) and the request's
``Environment``; no ``SM_*`` variables.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path

CURRENT_HOST = "algo-1"
# The interface this machine's jobs can reach each other on (SageMaker's is eth0): one host only.
NETWORK_INTERFACE = "lo"
HOMOGENEOUS_GROUP = "homogeneousCluster"  # SageMaker's group name when the request has no InstanceGroups
# The scikit-learn image's ENV SAGEMAKER_TRAINING_MODULE (the toolkit reports it as SM_FRAMEWORK_MODULE).
SKLEARN_IMAGE = "sagemaker-scikit-learn"
SKLEARN_TRAINING_MODULE = "sagemaker_sklearn_container.training:main"
# sagemaker_training.params.SAGEMAKER_HYPERPARAMETERS: the framework's own, never the script's.
TOOLKIT_HYPERPARAMETERS = (
    "sagemaker_program",
    "sagemaker_submit_directory",
    "sagemaker_enable_cloudwatch_metrics",
    "sagemaker_region",
    "sagemaker_container_log_level",
    "sagemaker_job_name",
    "default_user_module_name",
    "_tuning_objective_metric",
    "sagemaker_s3_output",
)
# Any of these in the additional framework parameters puts the current group in the distribution.
_DISTRIBUTION_FLAGS = (
    "sagemaker_mpi_enabled",
    "sagemaker_parameter_server_enabled",
    "sagemaker_distributed_dataparallel_enabled",
    "sagemaker_pytorch_ddp_enabled",
    "sagemaker_pytorch_xla_multi_worker_enabled",
    "sagemaker_multi_worker_mirrored_strategy_enabled",
    "sagemaker_torch_distributed_enabled",
)
LOG_LEVEL_INFO = 20


# --------------------------------------------------------------------------- config files


def training_resource_config(instance_type: str) -> dict:
    """/opt/ml/input/config/resourceconfig.json of a one-instance training job."""
    return {
        "current_host": CURRENT_HOST,
        "current_instance_type": instance_type,
        "current_group_name": HOMOGENEOUS_GROUP,
        "hosts": [CURRENT_HOST],
        "instance_groups": [
            {"instance_group_name": HOMOGENEOUS_GROUP, "instance_type": instance_type, "hosts": [CURRENT_HOST]}
        ],
        "network_interface_name": NETWORK_INTERFACE,
    }


def input_data_config(request: dict) -> dict:
    """/opt/ml/input/config/inputdataconfig.json: each channel's mode, distribution and content type."""
    mode = (request.get("AlgorithmSpecification") or {}).get("TrainingInputMode") or "File"
    return {
        c["ChannelName"]: {
            "TrainingInputMode": c.get("InputMode") or mode,
            "S3DistributionType": c["DataSource"]["S3DataSource"].get("S3DataDistributionType", "FullyReplicated"),
            "RecordWrapperType": c.get("RecordWrapperType", "None"),
            **({"ContentType": c["ContentType"]} if c.get("ContentType") else {}),
        }
        for c in request.get("InputDataConfig") or []
    }


def processing_resource_config(current_host: str = CURRENT_HOST, hosts: list[str] | None = None) -> dict:
    """/opt/ml/config/resourceconfig.json of one instance of a processing job (the documented keys)."""
    return {"current_host": current_host, "hosts": list(hosts or [current_host])}


def processing_job_config(name: str, request: dict, job_arn: str | None = None) -> dict:
    """/opt/ml/config/processingjobconfig.json: the request in the documented shape, defaults filled in.

    Paths are the container's (``/opt/ml/processing/...``), as in the request. ProcessingJobArn is
    left out when the caller does not know the job's ARN.
    """
    app = request.get("AppSpecification") or {}
    cluster = (request.get("ProcessingResources") or {}).get("ClusterConfig") or {}
    outputs = request.get("ProcessingOutputConfig") or {}
    config = {
        **({"ProcessingJobArn": job_arn} if job_arn else {}),
        "ProcessingJobName": name,
        "AppSpecification": {
            "ImageUri": app.get("ImageUri"),
            "ContainerEntrypoint": app.get("ContainerEntrypoint"),
            "ContainerArguments": app.get("ContainerArguments"),
        },
        "Environment": dict(request.get("Environment") or {}),
        "ProcessingInputs": [_processing_input(item) for item in request.get("ProcessingInputs") or []],
        "ProcessingOutputConfig": {
            "Outputs": [_processing_output(item) for item in outputs.get("Outputs") or []],
            "KmsKeyId": outputs.get("KmsKeyId"),
        },
        "ProcessingResources": {
            "ClusterConfig": {
                "InstanceCount": cluster.get("InstanceCount", 1),
                "InstanceType": cluster.get("InstanceType"),
                "VolumeSizeInGB": cluster.get("VolumeSizeInGB"),
                "VolumeKmsKeyId": cluster.get("VolumeKmsKeyId"),
            }
        },
        "RoleArn": request.get("RoleArn"),
        "StoppingCondition": dict(request.get("StoppingCondition") or {}),
    }
    for key in ("NetworkConfig", "ExperimentConfig"):
        if key in request:
            config[key] = request[key]
    return config


def _processing_input(item: dict) -> dict:
    source = item.get("S3Input") or {}
    s3_input = {
        "LocalPath": source.get("LocalPath"),
        "S3Uri": source.get("S3Uri"),
        "S3DataDistributionType": source.get("S3DataDistributionType", "FullyReplicated"),
        "S3DataType": source.get("S3DataType", "S3Prefix"),
        "S3InputMode": source.get("S3InputMode", "File"),
        "S3CompressionType": source.get("S3CompressionType", "None"),
        "S3DownloadMode": "StartOfJob",
    }
    return {**{k: v for k, v in item.items() if k != "S3Input"}, "S3Input": s3_input}


def _processing_output(item: dict) -> dict:
    target = item.get("S3Output") or {}
    s3_output = {
        "LocalPath": target.get("LocalPath"),
        "S3Uri": target.get("S3Uri"),
        "S3UploadMode": target.get("S3UploadMode", "EndOfJob"),
    }
    return {**{k: v for k, v in item.items() if k != "S3Output"}, "S3Output": s3_output}


# --------------------------------------------------------------------------- training environment


def split_hyperparameters(decoded: Mapping[str, object]) -> tuple[dict, dict]:
    """(framework's, script's): the toolkit's split, on the sagemaker_ prefix and its own names."""
    framework = {k: v for k, v in decoded.items() if k in TOOLKIT_HYPERPARAMETERS or k.startswith("sagemaker_")}
    return framework, {k: v for k, v in decoded.items() if k not in framework}


def to_cmd_args(hyperparameters: Mapping[str, object]) -> list[str]:
    """The toolkit's to_cmd_args: sorted names, '--name value' ('-n' for one letter), str() values."""
    args: list[str] = []
    for key in sorted(hyperparameters):
        value = hyperparameters[key]
        if isinstance(value, dict):
            value = ",".join(f"{k}={v}" for k, v in sorted(value.items()))
        args += [f"--{key}" if len(key) > 1 else f"-{key}", "" if value is None else str(value)]
    return args


def env_value(value: object) -> str:
    """The toolkit's format: a string as it is, None as "", anything else as sorted, compact JSON."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def platform_env(job_name: str, image: str | None, job_arn: str | None = None) -> dict[str, str]:
    """What the image and the training platform set before the toolkit starts."""
    env = {"TRAINING_JOB_NAME": job_name, **({"TRAINING_JOB_ARN": job_arn} if job_arn else {})}
    if image and SKLEARN_IMAGE in image:
        env["SAGEMAKER_TRAINING_MODULE"] = SKLEARN_TRAINING_MODULE
    return env


def toolkit_env(
    ml: Path,
    decoded_hyperparameters: Mapping[str, object],
    resource_config: dict,
    data_config: dict,
    container_env: Mapping[str, str],
) -> dict[str, str]:
    """The variables the toolkit adds for the script: its own (CURRENT_HOST, ...) and to_env_vars().

    ``container_env`` is the environment the toolkit starts in (image, platform, request).
    """
    summary = _training_summary(ml, decoded_hyperparameters, resource_config, data_config, container_env)
    framework, _ = split_hyperparameters(decoded_hyperparameters)
    # Environment() sets these in its own process, which the script inherits.
    env = {
        "SAGEMAKER_JOB_NAME": env_value(framework.get("sagemaker_job_name", "")),
        "CURRENT_HOST": summary["current_host"],
        "SAGEMAKER_REGION": env_value(framework.get("sagemaker_region") or ""),
    }
    exported = {
        "hosts": summary["hosts"],
        "network_interface_name": summary["network_interface_name"],
        "hps": summary["hyperparameters"],
        "user_entry_point": summary["user_entry_point"],
        "framework_params": summary["additional_framework_parameters"],
        "resource_config": resource_config,
        "input_data_config": data_config,
        "output_data_dir": summary["output_data_dir"],
        "channels": sorted(summary["channel_input_dirs"]),
        "training_env": summary,
        "user_args": to_cmd_args(summary["hyperparameters"]),
        **{
            key: summary[key]
            for key in (
                "current_host",
                "current_instance_type",
                "current_instance_group",
                "current_instance_group_hosts",
                "instance_groups",
                "instance_groups_dict",
                "distribution_instance_groups",
                "is_hetero",
                "module_name",
                "log_level",
                "framework_module",
                "input_dir",
                "input_config_dir",
                "output_dir",
                "num_cpus",
                "num_gpus",
                "num_neurons",
                "model_dir",
                "module_dir",
                "output_intermediate_dir",
            )
        },
    }
    if summary["topology"]:
        exported["topology"] = summary["topology"]
    exported.update({f"channel_{name}": path for name, path in summary["channel_input_dirs"].items()})
    exported.update({f"hp_{key}": value for key, value in summary["hyperparameters"].items()})
    env.update({f"SM_{key.upper()}": env_value(value) for key, value in exported.items()})
    return env


def _training_summary(
    ml: Path,
    decoded: Mapping[str, object],
    resource_config: dict,
    data_config: dict,
    container_env: Mapping[str, str],
) -> dict:
    """The toolkit's dict(Environment()): every property, computed as Environment.__init__ does."""
    framework, user_hps = split_hyperparameters(decoded)
    additional = {k: v for k, v in framework.items() if k not in TOOLKIT_HYPERPARAMETERS}
    hosts = resource_config["hosts"]
    current_host = resource_config["current_host"]
    instance_type = resource_config.get("current_instance_type", "local")
    group = resource_config.get("current_group_name", HOMOGENEOUS_GROUP)
    groups_config = resource_config.get("instance_groups", [])
    distribution_groups = additional.get(
        "sagemaker_distribution_instance_groups",
        [group] if any(additional.get(flag, False) for flag in _DISTRIBUTION_FLAGS) else [],
    )
    if groups_config:
        distribution_hosts = [
            h for g in groups_config if g["instance_group_name"] in distribution_groups for h in g["hosts"]
        ]
    else:
        distribution_hosts = list(hosts)
    master = (distribution_hosts or hosts)[0]
    program = framework.get("sagemaker_program")
    mp_parameters = container_env.get("SM_HP_MP_PARAMETERS")
    input_dir = ml / "input"
    output_dir = ml / "output"
    path = container_env.get("PATH")
    return {
        "additional_framework_parameters": additional,
        "channel_input_dirs": {name: str(input_dir / "data" / name) for name in data_config},
        "current_host": current_host,
        "current_instance_group": group,
        "current_instance_group_hosts": next(
            (g["hosts"] for g in groups_config if g["instance_group_name"] == group), []
        ),
        "current_instance_type": instance_type,
        "distribution_hosts": distribution_hosts,
        "distribution_instance_groups": distribution_groups,
        "framework_module": container_env.get("SAGEMAKER_TRAINING_MODULE"),
        "hosts": hosts,
        "hyperparameters": user_hps,
        "input_config_dir": str(input_dir / "config"),
        "input_data_config": data_config,
        "input_dir": str(input_dir),
        "instance_groups": [g["instance_group_name"] for g in groups_config],
        "instance_groups_dict": {g["instance_group_name"]: g for g in groups_config},
        "is_hetero": len(groups_config) > 1,
        "is_master": current_host == master,
        "is_modelparallel_enabled": mp_parameters and mp_parameters != "{}",
        "is_smddpmprun_installed": shutil.which("smddpmprun", path=path) is not None,
        "is_smddprun_installed": shutil.which("smddprun", path=path) is not None,
        "job_name": container_env.get("TRAINING_JOB_NAME"),
        "log_level": framework.get("sagemaker_container_log_level", LOG_LEVEL_INFO),
        "master_hostname": master,
        "model_dir": str(ml / "model"),
        "module_dir": str(framework.get("sagemaker_submit_directory", ml / "code")),
        "module_name": _module_name(program),
        "network_interface_name": resource_config.get("network_interface_name", "eth0"),
        "num_cpus": os.cpu_count() or 1,
        "num_gpus": 0,  # the job gets no GPU here
        "num_neurons": 64 if "trn2.48xlarge" in instance_type else 0,  # no neuron-ls here
        "output_data_dir": str(output_dir / "data"),
        "output_dir": str(output_dir),
        "output_intermediate_dir": str(output_dir / "intermediate"),
        "resource_config": resource_config,
        "topology": resource_config.get("topology", []),
        "user_entry_point": program,
    }


def _module_name(program: object) -> object:
    text = str(program)  # the toolkit str()s the parameter (so a missing one is "None")
    return text[:-3] if text.endswith(".py") else text
