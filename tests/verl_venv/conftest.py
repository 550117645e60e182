"""tests/verl_venv run only in the verl virtual environment (.venv-verl, see .ci/run); the test
module skips itself where verl is not installed. Its helpers (cpu_platform, ../hf_models)
are imported by name."""

import sys
from pathlib import Path

for folder in (Path(__file__).parent, Path(__file__).parent.parent):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
