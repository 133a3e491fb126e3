"""``make demo`` / ``make check`` refuse an interpreter older than ``requires-python`` in one line.

With Python 3.10 as ``python3`` (Ubuntu 22.04) the Makefile built .venv and pip failed on the lock
(``Could not find a version that satisfies the requirement check-jsonschema==…``), naming neither
Python nor the fix; ``deploy/dev/check_python.py`` now runs first.
"""

from __future__ import annotations

import re
import runpy
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "deploy" / "dev" / "check_python.py"


def test_an_old_interpreter_is_named_with_the_fix() -> None:
    problem = runpy.run_path(str(SCRIPT))["problem"]
    msg = problem((3, 10, 13, "final", 0), "python3")
    assert msg == "instantly-audit needs Python 3.11 or newer; python3 is 3.10.13. Install one and name it, " \
        "e.g. make demo PYTHON=python3.11"  # fmt: skip
    assert problem((3, 11, 0, "final", 0)) is None and problem((3, 13, 1, "final", 0)) is None


def test_the_minimum_is_pyprojects_requires_python() -> None:
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert requires == ">={}.{}".format(*runpy.run_path(str(SCRIPT))["MINIMUM"])


def test_the_makefile_checks_before_it_builds_the_venv() -> None:
    """The check is the venv recipe's first step, so a refused interpreter leaves no half-built .venv."""
    make = (ROOT / "Makefile").read_text()
    recipe = re.search(r"^\$\(VENV\)/\.installed:.*\n((?:\t.*\n)+)", make, re.M)
    assert recipe is not None
    steps = recipe.group(1).splitlines()
    assert "deploy/dev/check_python.py" in steps[0] and "-m venv" in steps[1], steps


def test_this_interpreter_passes_and_the_script_exits_1_with_the_line_when_old(tmp_path: Path) -> None:
    ok = subprocess.run([sys.executable, str(SCRIPT), "python3"], capture_output=True, text=True, check=False)
    assert (ok.returncode, ok.stderr) == (0, "")
    # An interpreter that reports 3.10: the real script, run with version_info replaced before it starts.
    shim = tmp_path / "old.py"
    shim.write_text(
        "import runpy, sys\n"
        "sys.version_info = (3, 10, 13, 'final', 0)\n"
        f"sys.argv = [{str(SCRIPT)!r}, 'python3.10']\n"
        f"runpy.run_path({str(SCRIPT)!r}, run_name='__main__')\n"
    )
    old = subprocess.run([sys.executable, str(shim)], capture_output=True, text=True, check=False)
    assert old.returncode == 1 and old.stderr.strip().startswith(
        "instantly-audit needs Python 3.11 or newer; python3.10"
    )
