"""Build hook: compile the redaction gate's C accelerator (``pipeline/redaction/_fastgate.c``) when it can.

hatchling runs this for every wheel, editable installs (``make``) included. With a C compiler and
the Python headers (CPython only) it compiles the module next to its source and ships it in the
wheel, which then carries a platform tag. Without them, or with ``INSTANTLY_AUDIT_PURE_PYTHON=1``,
it says so and builds the pure-Python wheel: the gate then runs its Python common case (the same
answers, about 10 % slower publishing; ``docs/benchmarks.md``).

The compiler and flags are the interpreter's own (``sysconfig``: ``CC``, ``CFLAGS``, ``CCSHARED``,
``LDSHARED``), as setuptools would use, so the module matches the interpreter it was built for.
"""

from __future__ import annotations

import os
import platform
import shlex
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

SOURCE = Path("pipeline") / "redaction" / "_fastgate.c"
PURE_ENV = "INSTANTLY_AUDIT_PURE_PYTHON"


def module_path(root: Path) -> Path:
    """Where the compiled module goes: beside its source, with this interpreter's extension suffix."""
    suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
    return root / SOURCE.with_name("_fastgate" + suffix)


def compile_accelerator(root: Path) -> tuple[Path | None, str]:
    """Compile ``_fastgate.c``; return (the module, "") or (None, why not)."""
    if os.environ.get(PURE_ENV, "") not in ("", "0"):
        return None, f"{PURE_ENV} is set"
    if platform.python_implementation() != "CPython":
        return None, f"{platform.python_implementation()} (the accelerator uses the CPython C API)"
    include = sysconfig.get_paths()["include"]
    if not (Path(include) / "Python.h").is_file():
        return None, f"no Python headers in {include}"
    cc = shlex.split(sysconfig.get_config_var("CC") or "cc")
    if not cc or shutil.which(cc[0]) is None:
        return None, f"no C compiler ({cc[0] if cc else 'CC unset'})"
    out = module_path(root)
    ccshared = shlex.split(sysconfig.get_config_var("CCSHARED") or "-fPIC")
    ldshared = shlex.split(sysconfig.get_config_var("LDSHARED") or "cc -shared")[1:]
    if sys.platform == "darwin":
        ldshared = [*ldshared, "-undefined", "dynamic_lookup"]
    # compiled beside, then renamed over: a process that has the old module loaded keeps its copy
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    cmd = [*cc, *ccshared, *ldshared, "-O2", "-Wall", "-I", include, str(root / SOURCE), "-o", str(tmp)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)  # noqa: S603
        if done.returncode != 0:
            return None, f"compiling failed:\n{done.stderr.strip()}"
        os.replace(tmp, out)
    except (OSError, subprocess.TimeoutExpired) as err:
        return None, f"{cmd[0]} failed: {err}"
    finally:
        tmp.unlink(missing_ok=True)
    return out, ""


class AcceleratorBuildHook(BuildHookInterface):  # type: ignore[type-arg]
    """Compile the accelerator into every wheel (pure Python when that is not possible)."""

    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        """Compile, then mark the wheel platform-specific and ship the module (git ignores it)."""
        if self.target_name != "wheel":
            return
        root = Path(self.root)
        module, why = compile_accelerator(root)
        if module is None:
            self.app.display_warning(f"instantly-audit: building without the C accelerator: {why}")
            return
        build_data["pure_python"] = False
        build_data["infer_tag"] = True
        if version != "editable":  # an editable install imports it from the source tree
            build_data["force_include"][str(module)] = module.relative_to(root).as_posix()
