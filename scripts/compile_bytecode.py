"""Compile the venv's packages to bytecode once, at install (`make install` runs it).

Where PYTHONDONTWRITEBYTECODE is set (it is on the project's machines), nothing else writes .pyc
files, and every process would compile dagster, pandas, sagemaker... again at each import (17.5 s
instead of 7 s to import them). uv's --compile-bytecode did this for all 14,000 files (about 33 s
here); this skips the packages' own test folders and what nothing here imports (sympy, networkx
and cfnlint come only with moto's CloudFormation linting, pip only installs uv): 8,600 files,
about 23 s. A skipped module that is imported after all still works, compiled in memory.
"""

from __future__ import annotations

import compileall
import re
import sysconfig

SKIP = re.compile(r"[/\\](tests?|sympy|networkx|cfnlint|pip)[/\\]")


def main() -> None:
    # A file that does not compile (a package's Python 2 example, say) is the package's business,
    # as it was with uv's --compile-bytecode: compileall prints it (quiet=1: errors only) and goes on.
    compileall.compile_dir(sysconfig.get_paths()["purelib"], quiet=1, workers=0, rx=SKIP)


if __name__ == "__main__":
    main()
