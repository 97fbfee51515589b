"""The breakdown benchmark times the stages it names, puts the loop's methods back, and reads
the database servers' CPU from /proc."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from benchmarks.breakdown import Round, Timings, report, server_cpu, stages_timed

REPO = Path(__file__).resolve().parents[2]


class Worker:
    def work(self, n: int) -> int:
        return sum(range(n))


class Inheriting(Worker):
    pass


def test_a_timed_stage_counts_its_calls_only_while_on_and_is_put_back() -> None:
    """Also on a class that inherits the method: timed there, and inherited again after."""
    original = Worker.__dict__["work"]
    timings = Timings()
    stages = ((0, "work", __name__, "Worker", "work"),
              (1, "inherited", __name__, "Inheriting", "work"))
    with stages_timed(timings, stages):
        assert Worker().work(10) == 45  # before the timed phase: not counted
        timings.start()
        for _ in range(3):
            Worker().work(100_000)
        assert Inheriting().work(10) == 45
        timings.on = False
        Worker().work(10)
    assert timings.calls == {"work": 4, "inherited": 1}
    assert timings.wall["work"] > 0 and timings.cpu["work"] > 0
    assert Worker.__dict__["work"] is original
    assert "work" not in Inheriting.__dict__


def _process(proc: Path, pid: int, name: str, utime: int, stime: int, cutime: int,
             cstime: int) -> None:
    entry = proc / str(pid)
    entry.mkdir()
    (entry / "comm").write_text(f"{name}\n")
    before = "S 1 1 1 0 -1 4194560 100 0 0 0"  # state .. cmajflt: the 11 fields before utime
    (entry / "stat").write_text(f"{pid} ({name}) {before} {utime} {stime} {cutime} {cstime} "
                                "20 0 1 0 100 1000 10\n")


def test_server_cpu_adds_the_named_processes_and_the_children_they_reaped(
        tmp_path: Path) -> None:
    tick = os.sysconf("SC_CLK_TCK")
    _process(tmp_path, 10, "postgres", 100, 50, 30, 20)  # the postmaster: reaped backends
    _process(tmp_path, 11, "postgres", 7, 3, 0, 0)  # a backend
    _process(tmp_path, 12, "mariadbd", 40, 10, 0, 0)
    _process(tmp_path, 13, "java", 1000, 1000, 0, 0)  # not a database
    (tmp_path / "self").mkdir()
    assert server_cpu(proc=tmp_path) == (200 + 10 + 50) / tick
    assert server_cpu(("mariadbd",), proc=tmp_path) == 50 / tick


def test_the_report_gives_medians_and_per_checkpoint_figures_only_with_a_store() -> None:
    def round_of(store: str, seconds: float, checkpoints: int, poll: float) -> Round:
        return Round(store, 1000, seconds, 1.0, 0.5, 0.002 * checkpoints, checkpoints,
                     {"poll": poll}, {"poll": poll / 2})

    text = report([round_of("none", 1.0, 0, 0.5), round_of("sqlite", 2.0, 4, 0.8),
                   round_of("sqlite", 4.0, 4, 1.2), round_of("sqlite", 3.0, 4, 1.0)])
    assert "== none: 1,000 msg/s, 0 checkpoints" in text
    assert "| poll | 0.500 | 50% | 0.250 | - | - |" in text
    assert "== sqlite: 333 msg/s, 4 checkpoints, median of 3 rounds" in text
    assert "(2.000 ms a checkpoint)" in text  # the server: 8 ms over 4 checkpoints
    assert "| poll | 1.000 | 33% | 0.500 | 250.000 | 125.000 |" in text


def test_a_breakdown_of_the_sqlite_store_times_every_checkpoint(kafka_bootstrap: str) -> None:
    """End to end on the broker: 5,000 messages checkpoint every 1,000, so four checkpoints
    end inside the timed phase (the fifth handles the last message and ends after it); each
    stage of a batch on SQLite is in the table. (A slow machine may checkpoint on the 1 s
    interval too.)"""
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.breakdown", "--stores", "sqlite", "--messages",
         "5000", "--rounds", "1"],
        cwd=REPO, env={**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap},
        capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    header = re.search(r"== sqlite: ([\d,]+) msg/s, ([\d,]+) checkpoints", done.stdout)
    assert header is not None, done.stdout
    assert int(header.group(2).replace(",", "")) >= 4  # more if the 1 s trigger fires too
    for stage in ("poll", "checkpoint", "opening (begin, claim)", "handlers",
                  "closing (SQLite: answered at once)"):
        assert re.search(rf"\| (· )*{re.escape(stage)} \| \d+\.\d+ \|", done.stdout), \
            (stage, done.stdout)
