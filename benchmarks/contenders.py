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
    #: IO-bound group only: messages per full run (sized for 10-20 s at the goal rate), and
    #: the ideal rate (in flight at once / the handler's 10 ms).
    messages: int | None = None
    ideal: float | None = None
    #: How many messages it may have in flight at once, in the results' words.
    concurrency: str = ""


CONTENDERS: tuple[Contender, ...] = (
    Contender(
        "raw", "benchmarks.runners.raw:run", PROJECT, EVERY_1000_OR_1S, kind="baseline",
        commits="explicit offsets, asynchronously, every 1,000 messages or 1 s; "
                "synchronously at the end",
    ),
    Contender(
        "raw-tuned", "benchmarks.runners.raw:run", PROJECT,
        {**EVERY_1000_OR_1S, "librdkafka": {"fetch.queue.backoff.ms": 100}}, kind="baseline",
        commits="as raw, with the fetch setting the framework's consumer uses "
                "(fetch.queue.backoff.ms 100 instead of the client's 1,000)",
    ),
    Contender(
        "framework", FRAMEWORK, PROJECT, EVERY_1000_OR_1S,
        commits="watermarks, asynchronously, every 1,000 messages or 1 s, one commit in "
                "flight (at most fifty intervals unconfirmed); synchronously on revoke and "
                "shutdown",
    ),
    Contender(
        "framework-context", FRAMEWORK, PROJECT, {**EVERY_1000_OR_1S, "handler": "noop_context"},
        commits="as framework; the no-op handler takes (message, context), so a context is "
                "built per message",
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
        "framework-mariadb", FRAMEWORK, PROJECT, {**EVERY_1000_OR_1S, "store": "mariadb"},
        needs=("store", "mariadb"),
        commits="checkpoint rows and processed keys in one MariaDB transaction per "
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
        "arroyo-batch", "benchmarks.runners.arroyo:run", "arroyo",
        {"mode": "batch", "batch": 1000}, kind="peer",
        commits="BatchStep(1,000 messages or 1 s) -> RunTask(no-op over the batch) -> "
                "CommitOffsets + CommitPolicy(1 s, 1,000 messages): synchronous commit of "
                "the highest offsets of the batches handled; shutdown hands on the "
                "unfinished batch, then forces a synchronous commit",
    ),
    Contender(
        "quixstreams", "benchmarks.runners.quix:run", "quixstreams", EVERY_1000_OR_1S,
        kind="peer",
        commits="checkpoint every 1,000 messages or 1 s (commit_every, commit_interval): "
                "synchronous commit of processed offsets; forced at stop",
    ),
    Contender(
        "faststream-confluent-batch", "benchmarks.runners.faststream:run", "faststream",
        {"backend": "confluent", "max_records": 500}, kind="peer",
        commits="batch subscriber (batch=True, max_records=500), default "
                "AckPolicy.ACK_FIRST: librdkafka auto-commit every 1 s of offsets stored "
                "when a batch is handed out (before the handler ran); synchronous commit at "
                "stop. No every-N-messages option",
    ),
    Contender(
        "faststream-aiokafka-batch", "benchmarks.runners.faststream:run", "faststream",
        {"backend": "aiokafka", "max_records": 500}, kind="peer",
        commits="batch subscriber (batch=True, max_records=500), default "
                "AckPolicy.ACK_FIRST: aiokafka auto-commit every 1 s of offsets handed out "
                "(before the handler ran); commit at stop. No every-N-messages option",
    ),
)


#: The IO-bound group's handler waits 10 ms; ideal = in flight at once / 10 ms.
SLEEP_SECONDS = 0.01
IO_KEYS = 1_000
ARROYO_PROCESSES = 8


def _io(name: str, runner: str, environment: str, options: dict[str, Any], *,
        in_flight: int, messages: int, concurrency: str, commits: str, kind: str = "peer",
        needs: tuple[str, ...] = ()) -> Contender:
    return Contender(name, runner, environment, options, commits=commits, needs=needs,
                     kind=kind, messages=messages, ideal=in_flight / SLEEP_SECONDS,
                     concurrency=concurrency)


_FRAMEWORK_IO_COMMITS = ("watermarks (lowest unfinished offset per partition), asynchronously, "
                         "every 1,000 messages or 1 s; synchronously at shutdown, after the "
                         "in-flight handlers finished")
_FASTSTREAM_IO_COMMITS = ("default AckPolicy.ACK_FIRST (the only policy its max_workers "
                          "accepts): offsets of messages handed to the workers, before the "
                          "handler ran, auto-committed every 1 s; synchronous commit at stop")

#: IO-bound handlers (``--io``): sleep 10 ms, over a topic of 1,000 keys and 6 partitions, one
#: process each. Message counts are for the full run; ``--quick`` divides them.
IO_CONTENDERS: tuple[Contender, ...] = (
    _io("io-framework-sync-c100", FRAMEWORK, PROJECT,
        {**EVERY_1000_OR_1S, "handler": "sleep", "concurrency": 100, "ordering": "key"},
        in_flight=100, messages=150_000, kind="framework", needs=("concurrency",),
        concurrency="`concurrency: 100`, `ordering: key`, `def` handler (thread pool)",
        commits=_FRAMEWORK_IO_COMMITS),
    _io("io-framework-async-c1000", FRAMEWORK, PROJECT,
        {**EVERY_1000_OR_1S, "handler": "sleep_async", "concurrency": 1000, "ordering": "key"},
        in_flight=1000, messages=300_000, kind="framework", needs=("concurrency",),
        concurrency="`concurrency: 1000`, `ordering: key`, `async def` handler (event loop)",
        commits=_FRAMEWORK_IO_COMMITS),
    _io("io-framework-postgres-c32", FRAMEWORK, PROJECT,
        {**EVERY_1000_OR_1S, "handler": "write_sleep", "store": "postgres",
         "concurrency": 32, "ordering": "key"},
        in_flight=32, messages=50_000, kind="framework",
        needs=("store", "postgres", "concurrency"),
        concurrency="`concurrency: 32`, `ordering: key`, `def` handler writing one row "
                    "through `context.execute`, then waiting (a PostgreSQL store)",
        commits="each message's row and processed key in a PostgreSQL transaction of its "
                "own, on its own pooled connection; checkpoint rows at the watermarks, in a "
                "fenced update every 1,000 messages or 1 s, then Kafka offsets"),
    _io("io-framework-mariadb-c32", FRAMEWORK, PROJECT,
        {**EVERY_1000_OR_1S, "handler": "write_sleep", "store": "mariadb",
         "concurrency": 32, "ordering": "key"},
        in_flight=32, messages=50_000, kind="framework",
        needs=("store", "mariadb", "concurrency"),
        concurrency="`concurrency: 32`, `ordering: key`, `def` handler writing one row "
                    "through `context.execute`, then waiting (a MariaDB store)",
        commits="each message's row and processed key in a MariaDB transaction of its own, "
                "on its own connection; checkpoint rows at the watermarks, in a fenced update "
                "every 1,000 messages or 1 s, then Kafka offsets"),
    _io("io-framework-postgres-async-c32", FRAMEWORK, PROJECT,
        {**EVERY_1000_OR_1S, "handler": "write_sleep_async", "store": "postgres",
         "concurrency": 32, "ordering": "key"},
        in_flight=32, messages=50_000, kind="framework",
        needs=("store", "postgres", "concurrency"),
        concurrency="`concurrency: 32`, `ordering: key`, `async def` handler awaiting one "
                    "row through `context.execute`, then waiting (a PostgreSQL store, "
                    "`store.async_connections: 32`)",
        commits="each message's row and processed key in a PostgreSQL transaction of its "
                "own, on a connection of the event loop's pool; checkpoint rows at the "
                "watermarks, in a fenced update every 1,000 messages or 1 s, then Kafka "
                "offsets"),
    _io("io-framework-mariadb-async-c32", FRAMEWORK, PROJECT,
        {**EVERY_1000_OR_1S, "handler": "write_sleep_async", "store": "mariadb",
         "concurrency": 32, "ordering": "key"},
        in_flight=32, messages=50_000, kind="framework",
        needs=("store", "mariadb", "concurrency"),
        concurrency="`concurrency: 32`, `ordering: key`, `async def` handler awaiting one "
                    "row through `context.execute`, then waiting (a MariaDB store: each "
                    "statement on a thread, `store.async_connections: 32`)",
        commits="each message's row and processed key in a MariaDB transaction of its own; "
                "checkpoint rows at the watermarks, in a fenced update every 1,000 messages "
                "or 1 s, then Kafka offsets"),
    _io("io-framework-sync-c1", FRAMEWORK, PROJECT, {**EVERY_1000_OR_1S, "handler": "sleep"},
        in_flight=1, messages=1_500, kind="framework",
        concurrency="no `concurrency` key (1: one message at a time, as before)",
        commits="watermarks, asynchronously, every 1,000 messages or 1 s"),
    _io("io-ceiling-async-c1000", "benchmarks.runners.raw_io:run", PROJECT,
        {"mode": "asyncio", "concurrency": 1000}, kind="baseline",
        in_flight=1000, messages=300_000,
        concurrency="a plain confluent-kafka loop on one event loop, up to 1,000 "
                    "`asyncio.sleep` tasks at once, no ordering",
        commits="offsets handed out, asynchronously every 1 s (before the handler ran): a "
                "ceiling, not a way to run"),
    _io("io-ceiling-postgres-c32", "benchmarks.runners.raw_io:run", PROJECT,
        {"mode": "postgres", "concurrency": 32, "batch": 8}, kind="baseline",
        in_flight=32, messages=50_000, needs=("postgres",),
        concurrency="a plain confluent-kafka loop feeding 32 threads, each with its own "
                    "psycopg connection: up to 8 messages per transaction, one row each then "
                    "the wait, no ordering, no processed keys",
        commits="offsets handed out, asynchronously every 1 s (before the handler ran): a "
                "ceiling, not a way to run"),
    _io("io-arroyo-threads-c100", "benchmarks.runners.arroyo:run", "arroyo",
        {"mode": "threads", "concurrency": 100, "max_pending": 1000},
        in_flight=100, messages=150_000,
        concurrency="`RunTaskInThreads(concurrency=100, max_pending_futures=1000)`",
        commits="CommitOffsets + CommitPolicy(1 s, 1,000 messages) after RunTaskInThreads, "
                "which hands results on in offset order: synchronous commit of finished "
                "offsets; forced at shutdown"),
    _io("io-arroyo-processes-p8", "benchmarks.runners.arroyo:run", "arroyo",
        {"mode": "processes", "processes": ARROYO_PROCESSES, "batch": 10},
        in_flight=ARROYO_PROCESSES, messages=12_000,
        concurrency=f"`RunTaskWithMultiprocessing`, {ARROYO_PROCESSES} processes, batches "
                    "of 10 or 1 s (each process runs its batch one message at a time)",
        commits="CommitOffsets + CommitPolicy(1 s, 1,000 messages) after the multiprocessing "
                "step, which hands batches on in offset order; forced at shutdown"),
    _io("io-faststream-confluent-async-c1000", "benchmarks.runners.faststream:run",
        "faststream", {"backend": "confluent", "handler": "sleep_async", "max_workers": 1000},
        in_flight=1000, messages=300_000,
        concurrency="`max_workers=1000` (ConcurrentDefaultSubscriber), `async def` handler",
        commits=_FASTSTREAM_IO_COMMITS),
    _io("io-faststream-aiokafka-async-c1000", "benchmarks.runners.faststream:run",
        "faststream", {"backend": "aiokafka", "handler": "sleep_async", "max_workers": 1000},
        in_flight=1000, messages=300_000,
        concurrency="`max_workers=1000` (ConcurrentDefaultSubscriber), `async def` handler",
        commits=_FASTSTREAM_IO_COMMITS),
    _io("io-faststream-confluent-sync-c100", "benchmarks.runners.faststream:run",
        "faststream", {"backend": "confluent", "handler": "sleep", "max_workers": 100},
        in_flight=100, messages=150_000,
        concurrency="`max_workers=100`, `def` handler (FastStream runs it in anyio's thread "
                    "pool)",
        commits=_FASTSTREAM_IO_COMMITS),
)


def by_name(names: list[str] | None) -> list[Contender]:
    """The throughput contenders named (all, in registry order, when ``names`` is None)."""
    return select(names, io=False)[0]


def select(names: list[str] | None, *, io: bool) -> tuple[list[Contender], list[Contender]]:
    """The throughput group and the IO-bound group to run.

    No names: every throughput contender, and every IO-bound one when ``io``. Names pick from
    both groups; naming an IO-bound contender runs it without ``io``, and ``io`` with names
    that are all throughput contenders adds the whole IO-bound group.
    """
    if names is None:
        return list(CONTENDERS), list(IO_CONTENDERS) if io else []
    known = {c.name: c for c in (*CONTENDERS, *IO_CONTENDERS)}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown contender(s) {', '.join(unknown)}; known: "
                         f"{', '.join(known)}")
    throughput = [known[n] for n in names if known[n] in CONTENDERS]
    chosen_io = [known[n] for n in names if known[n] in IO_CONTENDERS]
    if io and not chosen_io:
        chosen_io = list(IO_CONTENDERS)
    return throughput, chosen_io
