"""Everything SageMaker: SDK set-up, the pipeline builder, the SageMaker resource and the local service.

Importing this package configures the SDK before ``sagemaker`` itself is imported: telemetry off,
no machine-wide SDK defaults, no v2 deprecation banner, and botocore's service models parsed once
per process (``botocore_loader.py``).
"""

import logging
import os
from pathlib import Path

from .. import botocore_loader

SDK_CONFIG = Path(__file__).with_name("sdk_config.yaml")

os.environ["SAGEMAKER_USER_CONFIG_OVERRIDE"] = str(SDK_CONFIG)
os.environ["SAGEMAKER_ADMIN_CONFIG_OVERRIDE"] = str(SDK_CONFIG)
os.environ.setdefault("SAGEMAKER_SUPPRESS_V2_WARNING", "1")
# The SDK makes botocore sessions of its own (one at import): they parse each service's model once.
botocore_loader.share()
# The SDK logs "Applying/Not applying SDK defaults" at INFO on every session.
logging.getLogger("sagemaker.config").setLevel(logging.WARNING)
# Notices about fields popped from the definition and instance types resolved from parameter
# defaults describe the SDK's normal behaviour; they would fill every materialization's log.
for _name in ("sagemaker.image_uris", "sagemaker.workflow.utilities", "sagemaker.workflow._utils"):
    logging.getLogger(_name).setLevel(logging.ERROR)
# It announces telemetry before it reads the opt-out above; the request itself is never sent.
logging.getLogger("sagemaker.telemetry.telemetry_logging").setLevel(logging.WARNING)
