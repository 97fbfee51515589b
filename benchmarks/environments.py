"""Where each contender's Python comes from: the project's venv, or one venv per peer.

Peers get a venv each under ``.local/bench-venvs/NAME`` built from ``benchmarks/peers/NAME.txt``
(their client pins conflict: quixstreams needs confluent-kafka < 2.13, arroyo >= 2.13.2). A venv
is rebuilt when its requirements file changes. One that cannot be built is reported as missing,
with the reason and the installer's log.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from benchmarks.contenders import PROJECT

REPO_ROOT = Path(__file__).resolve().parents[1]
PEERS = Path(__file__).resolve().parent / "peers"
VENVS = REPO_ROOT / ".local" / "bench-venvs"
INSTALL_TIMEOUT_S = 900


@dataclass(frozen=True)
class Environment:
    name: str
    python: Path | None
    #: Why it cannot run contenders (None when it can).
    missing: str | None = None


def prepare(name: str, *, say: bool = True) -> Environment:
    """The environment ``name``, building its venv first when needed."""
    if name == PROJECT:
        return Environment(name, Path(sys.executable))
    requirements = PEERS / f"{name}.txt"
    if not requirements.exists():
        return Environment(name, None, f"no requirements file {requirements}")
    venv = VENVS / name
    python = venv / "bin" / "python"
    stamp = venv / ".requirements-sha256"
    digest = hashlib.sha256(requirements.read_bytes()).hexdigest()
    if python.exists() and stamp.exists() and stamp.read_text() == digest:
        return Environment(name, python)
    if say:
        print(f"bench: building the {name} venv from {requirements.name} (first time only)",
              flush=True)
    failure = _build(venv, requirements)
    if failure is not None:
        return Environment(name, None, failure)
    stamp.write_text(digest)
    return Environment(name, python)


def _build(venv: Path, requirements: Path) -> str | None:
    """Create ``venv`` and install ``requirements``; the reason when that fails."""
    shutil.rmtree(venv, ignore_errors=True)
    venv.parent.mkdir(parents=True, exist_ok=True)
    log = venv.parent / f"{venv.name}-install.log"
    steps = [
        [sys.executable, "-m", "venv", str(venv)],
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--upgrade", "pip"],
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "-r",
         str(requirements)],
    ]
    with log.open("w") as out:
        for step in steps:
            try:
                result = subprocess.run(step, stdout=out, stderr=subprocess.STDOUT,
                                        timeout=INSTALL_TIMEOUT_S, check=False)
            except subprocess.TimeoutExpired:
                return f"'{' '.join(step[-3:])}' took over {INSTALL_TIMEOUT_S} s (log: {log})"
            if result.returncode != 0:
                return (f"'{' '.join(step[-3:])}' failed with exit {result.returncode}: "
                        f"{_last_line(log)} (log: {log})")
    return None


def _last_line(log: Path) -> str:
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1][:300] if lines else "(no output)"
