"""Print constraints.txt: the exact versions of the runtime dependencies installed in this venv.

The image installs these pins in its dependency layer, so two builds of one commit get the same
packages. Only what ``consumer`` needs at run time is pinned (pyproject's ``dependencies`` and
what they require in turn, for Linux and CPython), never the dev tools.

    .venv/bin/python scripts/runtime_constraints.py > constraints.txt
"""

from __future__ import annotations

import re
import sys
import tomllib
from importlib.metadata import distribution
from pathlib import Path

from packaging.requirements import Requirement

REPO_ROOT = Path(__file__).resolve().parents[1]
HEADER = """\
# Exact versions of the runtime dependencies (pyproject's `dependencies`, transitively), for the
# image's dependency layer. Generated; to regenerate after changing dependencies or upgrading:
#   .venv/bin/python scripts/runtime_constraints.py > constraints.txt
"""


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def runtime_pins(pyproject: Path = REPO_ROOT / "pyproject.toml") -> dict[str, str]:
    """Name -> installed version of every runtime dependency, transitively."""
    requirements = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    todo = [Requirement(text) for text in requirements]
    pins: dict[str, str] = {}
    while todo:
        requirement = todo.pop()
        name = canonical(requirement.name)
        if name in pins:
            continue
        dist = distribution(requirement.name)
        pins[name] = dist.version
        extras = requirement.extras | {""}
        for text in dist.requires or []:
            needed = Requirement(text)
            if needed.marker is None or any(needed.marker.evaluate({"extra": extra})
                                            for extra in extras):
                todo.append(needed)
    return pins


def main() -> int:
    sys.stdout.write(HEADER + "".join(f"{name}=={version}\n"
                                      for name, version in sorted(runtime_pins().items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
