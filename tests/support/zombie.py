"""A zombie on cue: the test's side of the gate that ``tests.support.chaos_member`` opens.

A zombie must really try to commit after the group moved on, or a run proves nothing about
the fence. A member frozen at a random moment often wakes in ``poll``, hears it lost its
partitions, and never attempts a late commit. So the member freezes itself at a chosen point:
at the start of a checkpoint, holding a batch it polled and did not apply, with no store
transaction open (nothing blocks the new owner). The test waits until the new owners have
checkpointed past that batch, then lets it continue straight into its checkpoint.

Files in the gate's directory: ``freeze`` (the request; the first member to rename it wins),
``zombie-PID.json`` (the rows it is about to write) and ``zombie-PID.outcome``
(``committed``, or the name of the exception its checkpoint raised, e.g. ``Fenced``).
"""

from __future__ import annotations

import json
import os
import signal
from dataclasses import dataclass
from pathlib import Path

from consumer_process import wait_for

from tests.support.stores import StoreUnderTest


@dataclass
class Zombie:
    directory: Path
    pid: int
    #: (topic, partition, next offset, epoch) the zombie is about to write.
    rows: list[tuple[str, int, int, int]]
    process_name: str = "?"

    def stopped(self) -> bool:
        """Whether the process is in the stopped state (it stops itself after writing)."""
        try:
            stat = Path(f"/proc/{self.pid}/stat").read_text()
        except OSError:
            return False
        return stat.rsplit(")", 1)[1].split()[0] == "T"

    def overtaken(self, store: StoreUnderTest, group: str) -> bool:
        """Every partition of the zombie's batch has a newer owner (a higher epoch), and one at
        least has a checkpoint row past the zombie's batch: a late write there moves it back."""
        found = {(t, p): (o, e) for t, p, o, e in store.query(
            'SELECT topic, "partition", next_offset, epoch FROM consumer_checkpoints '
            "WHERE group_id = %s", (group,))}
        moved_on = all(found.get((t, p), (None, 0))[1] > epoch for t, p, _, epoch in self.rows)
        passed = any((found.get((t, p), (None, 0))[0] or 0) > offset
                     for t, p, offset, _ in self.rows)
        return moved_on and passed

    def open_transactions(self, store: StoreUnderTest) -> int:
        """The zombie's PostgreSQL sessions left inside a transaction (its workers' claims
        and effects, not committed); 0 on SQLite."""
        if store.backend != "postgresql":
            return 0
        return int(store.scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s "
            "AND state = 'idle in transaction'", (f"chaos-member-{self.pid}",)))

    def release(self) -> None:
        os.kill(self.pid, signal.SIGCONT)

    def outcome(self) -> str | None:
        """How the late checkpoint ended: ``committed``, or the class of the error it raised
        (None: not yet)."""
        path = self.directory / f"zombie-{self.pid}.outcome"
        return path.read_text().split("\n", 1)[0].strip() if path.exists() else None

    def outcome_reason(self) -> str:
        """The message of the error the late checkpoint raised ("" if none)."""
        path = self.directory / f"zombie-{self.pid}.outcome"
        return path.read_text().partition("\n")[2] if path.exists() else ""


@dataclass
class ZombieGate:
    directory: Path

    def __post_init__(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)

    def request(self) -> None:
        (self.directory / "freeze").touch()

    def wait_frozen(self, *, timeout: float, what: str) -> Zombie:
        found: list[Zombie] = []

        def frozen() -> bool:
            for path in self.directory.glob("zombie-*.json"):
                data = json.loads(path.read_text())
                rows = [(str(t), int(p), int(o), int(e)) for t, p, o, e in data["rows"]]
                zombie = Zombie(self.directory, int(data["pid"]), rows)
                if zombie.outcome() is None and zombie.stopped():
                    found.append(zombie)
                    return True
            return False

        wait_for(frozen, timeout=timeout, what=f"a member to freeze itself as a zombie ({what})")
        return found[0]
