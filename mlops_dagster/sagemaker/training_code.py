"""The code the pipeline runs: where the training scripts live and the hash that versions them.

Kept apart from ``pipeline_builder`` so that loading the code location does not import the
SageMaker SDK (seconds per Dagster process).
"""

import hashlib
import shutil
import tempfile
from pathlib import Path

TRAINING_DIR = Path(__file__).resolve().parents[2] / "training"


def code_version(training_dir: str | Path = TRAINING_DIR) -> str:
    """sha256 over the training scripts' names and bytes: the code the definition embeds."""
    digest = hashlib.sha256()
    for path in sorted(Path(training_dir).glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def stage_training_code(training_dir: str | Path = TRAINING_DIR, entry_point: str | Path = "train.py") -> Path:
    """Copy the scripts (``*.py`` only: no caches, no lint config) to a content-addressed folder.

    The SDK's code hash includes the absolute path of what it uploads, so building from the
    checkout would give each clone (and each stray ``__pycache__``) its own definition. From
    ``<tmp>/mlops-dagster-code/<sha256>/`` every build of the same code gives the same bytes.
    ``entry_point`` may name a script outside ``training_dir`` (the recipe's own train.py); it is
    staged beside the others under its own name.
    """
    source = Path(training_dir)
    files = {p.name: p for p in sorted(source.glob("*.py"))}
    entry = Path(entry_point)
    if entry.is_absolute() or entry.parent != Path("."):
        if not entry.is_file():
            raise FileNotFoundError(f"training entry point {entry} does not exist")
        files[entry.name] = entry
    digest = hashlib.sha256()
    for name, path in sorted(files.items()):
        digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    target = Path(tempfile.gettempdir()) / "mlops-dagster-code" / digest.hexdigest()[:32]
    if not target.is_dir():
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(prefix=".staging-", dir=target.parent))
        for name, path in files.items():
            shutil.copyfile(path, partial / name)
        try:
            partial.rename(target)
        except OSError:  # another build staged the same code first
            shutil.rmtree(partial, ignore_errors=True)
    return target
