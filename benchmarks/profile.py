"""Where the time goes: the raw loop and the framework under cProfile, in this process.

    python -m benchmarks.profile [--messages 200000] [--top 20] [--contenders raw,framework]

Preloads its own topic, runs each contender's runner in-process under cProfile timed with the
consuming thread's CPU clock (``time.thread_time``: waits and librdkafka's own threads do not
count), prints the top functions by own time, and writes them to
``benchmarks/results/profile.txt``. Needs KAFKA_BOOTSTRAP_SERVERS.
"""

from __future__ import annotations

import argparse
import cProfile
import importlib
import io
import os
import pstats
import sys
import tempfile
import time
import uuid
from pathlib import Path

from benchmarks import topic
from benchmarks.contenders import by_name
from benchmarks.options import RESULTS
from benchmarks.runners.tally import RunSpec, Tally


def profile_one(name: str, bootstrap: str, topic_name: str, messages: int, top: int,
                cap_seconds: float) -> str:
    contender = by_name([name])[0]
    module_name, _, function = contender.runner.partition(":")
    runner = getattr(importlib.import_module(module_name), function)
    spec = RunSpec(bootstrap, topic_name, f"bench-profile-{name}-{uuid.uuid4().hex[:6]}",
                   messages, dict(contender.options))
    tally = Tally(messages, cap_seconds)
    here = os.getcwd()
    os.chdir(tempfile.mkdtemp(prefix="bench-profile-"))  # the runners write scratch files
    # PROFILE_WALL=1: wall time, so waits on the broker show too.
    timer = time.perf_counter if os.environ.get("PROFILE_WALL") else time.thread_time
    profiler = cProfile.Profile(timer)
    try:
        profiler.enable()
        runner(spec, tally)
        profiler.disable()
    finally:
        os.chdir(here)
    phases = tally.phases()
    consume_s, cpu_s = phases["consume_s"] or 0.0, phases["consume_cpu_s"] or 0.0
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(top)
    body = "\n".join(line for line in out.getvalue().splitlines() if line.strip())
    done = tally.timed or tally.count
    return (f"== {name}: {done:,} messages in {consume_s:.2f} s "
            f"({done / consume_s if consume_s else 0:,.0f} msg/s under the profiler), "
            f"process CPU {cpu_s / max(done, 1) * 1e6:.1f} µs/msg; "
            f"consuming thread, by own time:\n{body}\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile")
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--top", type=int, default=20)
    parser.add_argument("--cap-seconds", type=float, default=30.0)
    parser.add_argument("--contenders", default="raw,framework-sync,framework")
    parser.add_argument("--out", type=Path, default=RESULTS / "profile.txt")
    args = parser.parse_args(argv)
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if not bootstrap:
        print("profile: set KAFKA_BOOTSTRAP_SERVERS", file=sys.stderr)
        return 2
    name = f"bench-profile-{uuid.uuid4().hex[:6]}"
    topic.preload(bootstrap, name, partitions=6, messages=args.messages, size=100)
    try:
        reports = [profile_one(c.strip(), bootstrap, name, args.messages, args.top,
                               args.cap_seconds)
                   for c in args.contenders.split(",")]
    finally:
        topic.delete(bootstrap, name)
    text = "\n".join(reports)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
