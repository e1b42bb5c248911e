"""Everything SageMaker: SDK set-up, the pipeline builder, the SageMaker resource and the local service.

Importing this package configures the SDK before ``sagemaker`` itself is imported: telemetry off,
no machine-wide SDK defaults, no v2 deprecation banner.
"""

import logging
import os
from pathlib import Path

SDK_CONFIG = Path(__file__).with_name("sdk_config.yaml")

os.environ["SAGEMAKER_USER_CONFIG_OVERRIDE"] = str(SDK_CONFIG)
os.environ["SAGEMAKER_ADMIN_CONFIG_OVERRIDE"] = str(SDK_CONFIG)
os.environ.setdefault("SAGEMAKER_SUPPRESS_V2_WARNING", "1")
# The SDK logs "Applying/Not applying SDK defaults" at INFO on every session.
logging.getLogger("sagemaker.config").setLevel(logging.WARNING)
