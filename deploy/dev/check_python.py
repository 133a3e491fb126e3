"""Refuse an interpreter older than the project's ``requires-python`` before ``make`` builds .venv.

Run by the Makefile as ``$(PYTHON) deploy/dev/check_python.py`` ahead of ``python -m venv``: with
Python 3.10 (Ubuntu 22.04's ``python3``) the install got as far as pip and failed with ``Could not
find a version that satisfies the requirement check-jsonschema==…``, which names neither Python nor
the fix. Written for any Python 3.6+ (nothing newer than f-strings): the interpreter it judges may be old.
"""

import sys

MINIMUM = (3, 11)


def problem(version, python="python3"):
    """The one line to print when ``version`` is too old (``None`` when it will do)."""
    if tuple(version[:2]) >= MINIMUM:
        return None
    have = ".".join(str(part) for part in version[:3])
    need = "{}.{}".format(*MINIMUM)
    return (
        f"instantly-audit needs Python {need} or newer; {python} is {have}. Install one and name it, "
        f"e.g. make demo PYTHON=python{need}"
    )


if __name__ == "__main__":
    found = problem(tuple(sys.version_info), sys.argv[1] if len(sys.argv) > 1 else sys.executable)
    if found:
        sys.exit(found)
