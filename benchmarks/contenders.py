"""The contenders: who runs, in which environment, configured how, committing what.

A contender is data: a runner (``module:function`` executed in a child process, see
``benchmarks/runners/``), the environment whose Python runs it, options for the runner, and
the capabilities it needs from this checkout. Adding a mode is one entry here, e.g.::

    Contender("framework-metrics", FRAMEWORK, PROJECT,
              {"settings": {"metrics": {"enabled": True}}}, needs=("metrics",), commits=...)

A contender whose environment cannot be built or whose capability is missing is reported as
missing with the reason, never dropped.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

#: The project's own venv (the one running the harness).
PROJECT = "project"
FRAMEWORK = "benchmarks.runners.framework:run"
EVERY_1000_OR_1S = {"every_messages": 1000, "every_seconds": 1.0}


@dataclass(frozen=True)
class Contender:
    name: str
    runner: str
    environment: str
    options: Mapping[str, Any] = field(default_factory=dict)
    #: What it commits and how, in the results' words.
    commits: str = ""
    #: Capabilities of this checkout it needs (see ``capabilities.py``).
    needs: tuple[str, ...] = ()
    kind: str = "framework"  # "baseline", "framework" or "peer"


CONTENDERS: tuple[Contender, ...] = (
    Contender(
        "raw", "benchmarks.runners.raw:run", PROJECT, EVERY_1000_OR_1S, kind="baseline",
        commits="explicit offsets, asynchronously, every 1,000 messages or 1 s; "
                "synchronously at the end",
    ),
    Contender(
        "framework", FRAMEWORK, PROJECT, EVERY_1000_OR_1S,
        commits="watermarks, asynchronously, every 1,000 messages or 1 s, one commit in "
                "flight (at most ten intervals unconfirmed); synchronously on revoke and "
                "shutdown",
    ),
    Contender(
        "framework-sync", FRAMEWORK, PROJECT, {**EVERY_1000_OR_1S, "synchronous_commits": True},
        commits="watermarks, synchronously, every 1,000 messages or 1 s",
    ),
    Contender(
        "framework-sqlite", FRAMEWORK, PROJECT, {**EVERY_1000_OR_1S, "store": "sqlite"},
        needs=("store",),
        commits="checkpoint rows and processed keys in one SQLite transaction per "
                "checkpoint (1,000 messages or 1 s), then Kafka offsets",
    ),
    Contender(
        "framework-postgres", FRAMEWORK, PROJECT, {**EVERY_1000_OR_1S, "store": "postgres"},
        needs=("store", "postgres"),
        commits="checkpoint rows and processed keys in one PostgreSQL transaction per "
                "checkpoint (1,000 messages or 1 s), then Kafka offsets",
    ),
    Contender(
        "framework-metrics", FRAMEWORK, PROJECT,
        {**EVERY_1000_OR_1S, "settings": {"metrics": {"enabled": True, "port": 0}}},
        needs=("metrics",),
        commits="as framework, with Prometheus metrics served (metrics.enabled, any port)",
    ),
    Contender(
        "arroyo", "benchmarks.runners.arroyo:run", "arroyo", kind="peer",
        commits="CommitOffsets + CommitPolicy(1 s, 1,000 messages): synchronous commit of "
                "staged offsets; forced synchronous commit at shutdown",
    ),
    Contender(
        "quixstreams", "benchmarks.runners.quix:run", "quixstreams", EVERY_1000_OR_1S,
        kind="peer",
        commits="checkpoint every 1,000 messages or 1 s (commit_every, commit_interval): "
                "synchronous commit of processed offsets; forced at stop",
    ),
    Contender(
        "faststream-confluent", "benchmarks.runners.faststream:run", "faststream",
        {"backend": "confluent"}, kind="peer",
        commits="default AckPolicy.ACK_FIRST: librdkafka auto-commit every 1 s of offsets "
                "stored when a batch is handed out (before the handler ran); synchronous "
                "commit at stop. No every-N-messages option",
    ),
    Contender(
        "faststream-aiokafka", "benchmarks.runners.faststream:run", "faststream",
        {"backend": "aiokafka"}, kind="peer",
        commits="default AckPolicy.ACK_FIRST: aiokafka auto-commit every 1 s of offsets "
                "handed out (before the handler ran); commit at stop. No every-N-messages "
                "option",
    ),
)


def by_name(names: list[str] | None) -> list[Contender]:
    """The contenders named (all, in registry order, when ``names`` is None)."""
    if names is None:
        return list(CONTENDERS)
    known = {c.name: c for c in CONTENDERS}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown contender(s) {', '.join(unknown)}; known: "
                         f"{', '.join(known)}")
    return [known[n] for n in names]
