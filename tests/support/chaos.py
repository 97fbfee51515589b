"""The ledger chaos run: balance changes, consumer processes killed at random and one frozen
into a zombie, and a checker that compares the database with what was produced."""

from __future__ import annotations

import json
import random
import signal
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from consumer_process import ConsumerProcess, wait_for

from tests.support.audit import regressions
from tests.support.kafka import end_offsets, group_offsets, produce
from tests.support.stores import StoreUnderTest
from tests.support.zombie import Zombie, ZombieGate


@dataclass(frozen=True)
class Ledger:
    """What was produced: every event once, some of them again at a later offset.

    An event's ``idempotency-key`` header is its ``key`` (default: its ``event`` id); a
    ``gate`` event has no header (its dedup key falls back to its coordinates) and is rejected
    by ``tests.support.ledger_chaos`` until the gate file exists: it goes to the dead-letter
    topic, and a redrive brings it back.
    """

    events: list[dict[str, Any]]
    resent: list[int]

    @property
    def expected_balances(self) -> dict[str, int]:
        totals: Counter[str] = Counter()
        for event in self.events:
            totals[event["account"]] += event["amount"]
        return dict(totals)

    @property
    def gated(self) -> int:
        return sum(1 for event in self.events if event.get("gate"))

    def __add__(self, other: Ledger) -> Ledger:
        """Both ledgers' events, as one group consuming both topics should apply them."""
        return Ledger([*self.events, *other.events], [])


def make_ledger(count: int, *, accounts: int = 50, resend_every: int = 100,
                seed: int = 7, prefix: str = "", gate_every: int | None = None) -> Ledger:
    """``count`` balance changes; every ``resend_every``-th is produced again at a later offset
    (1% by default). With a ``prefix``, event ids are ``PREFIXe17`` while the header stays
    ``e17``: two ledgers with different prefixes carry the same header values for different
    events. With ``gate_every``, one event in that many is a ``gate`` event (never resent)."""
    rng = random.Random(seed)
    events: list[dict[str, Any]] = []
    for i in range(count):
        event: dict[str, Any] = {"event": f"{prefix}e{i}",
                                 "account": f"acc-{rng.randrange(accounts)}",
                                 "amount": rng.randint(-1000, 1000)}
        if prefix:
            event["key"] = f"e{i}"
        if gate_every is not None and i % gate_every == gate_every // 2:
            event["gate"] = True
        events.append(event)
    resent = [i for i in range(0, count, resend_every) if not events[i].get("gate")]
    return Ledger(events, resent)


def produce_ledger(bootstrap: str, topic: str, ledger: Ledger, *,
                   batch_bytes: int | None = None) -> int:
    order = [*range(len(ledger.events)), *ledger.resent]

    def headers(n: int) -> list[tuple[str, bytes]]:
        event = ledger.events[order[n]]
        if event.get("gate"):
            return []
        return [("idempotency-key", str(event.get("key", event["event"])).encode())]

    return produce(
        bootstrap, topic,
        (json.dumps(ledger.events[i]).encode() for i in order),
        key=lambda n: ledger.events[order[n]]["account"].encode(),
        headers=headers,
        batch_bytes=batch_bytes,
    )


@dataclass(repr=False)
class Verdict:
    """What the store holds against what was produced. ``regressions`` (checkpoint rows that
    moved backwards) is None when the run was not audited (see tests.support.audit)."""

    applied_entries: int
    distinct_events: int
    duplicated_events: int
    lost_events: int
    wrong_balances: dict[str, tuple[int, int]] = field(default_factory=dict)
    processed_keys: int = 0
    regressions: list[tuple[str, int, int, int]] | None = None
    #: A few of the events applied twice and of those never applied, to start a diagnosis.
    duplicated_examples: list[str] = field(default_factory=list)
    lost_examples: list[str] = field(default_factory=list)

    @property
    def exact(self) -> bool:
        return not (self.duplicated_events or self.lost_events or self.wrong_balances
                    or self.regressions)

    def __repr__(self) -> str:
        moved_back = ("not audited" if self.regressions is None
                      else f"{len(self.regressions)} {self.regressions[:3]}")
        return (f"<{'exact' if self.exact else 'NOT EXACT'}: {self.applied_entries} entries for "
                f"{self.distinct_events} distinct events; {self.duplicated_events} applied "
                f"twice or more {self.duplicated_examples}; {self.lost_events} lost "
                f"{self.lost_examples}; {len(self.wrong_balances)} wrong balances; "
                f"{self.processed_keys} processed keys; checkpoint rows moved back: "
                f"{moved_back}>")


def check(store: StoreUnderTest, ledger: Ledger, group: str, *, tables: str = "",
          audited: bool = False) -> Verdict:
    """Compare the ``{tables}ledger_entries`` and ``{tables}accounts`` tables with the
    ledger; with ``audited``, also every backwards move of the group's checkpoint rows."""
    entries_table, accounts_table = f"{tables}ledger_entries", f"{tables}accounts"
    entries = store.scalar(f"SELECT count(*) FROM {entries_table}")
    applied = {str(e) for (e,) in store.query(f"SELECT DISTINCT event FROM {entries_table}")}
    twice = [str(e) for (e,) in store.query(
        f"SELECT event FROM {entries_table} GROUP BY event HAVING count(*) > 1 "
        "ORDER BY event LIMIT 5")]
    lost = sorted({str(e["event"]) for e in ledger.events} - applied)
    balances = dict(store.query(f"SELECT id, balance FROM {accounts_table}"))
    wrong = {account: (balances.get(account, 0), want)
             for account, want in ledger.expected_balances.items()
             if balances.get(account, 0) != want}
    keys = store.processed_key_count(group)
    return Verdict(entries, len(applied), entries - len(applied), len(lost), wrong, keys,
                   regressions(store, group) if audited else None, twice, lost[:5])


@dataclass
class Chaos:
    """Keeps ``members`` consumer processes of one group running while killing them, and
    turns one into a zombie that really attempts its commit late (:meth:`make_zombie`).

    Members run ``tests.support.chaos_member`` (the product, plus the zombie gate), with
    ``defect`` naming a guarantee removed (tests.support.broken_consumer). With
    ``aim_at_windows``, a kill waits for a member inside its defect's crash window."""

    workdir: Path
    config: dict[str, Any]
    members: int = 3
    env: dict[str, str] = field(default_factory=dict)
    defect: str | None = None
    aim_at_windows: bool = False
    rng: random.Random = field(default_factory=random.Random)
    kills: int = 0
    freezes: int = 0
    processes: list[ConsumerProcess] = field(default_factory=list)
    zombie: Zombie | None = None
    #: The most transactions the zombie was seen holding open while frozen (PostgreSQL).
    zombie_open_transactions: int = 0
    #: Per member slot, the config it runs with instead of ``config`` (a restart keeps it).
    slot_configs: dict[int, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.gate = ZombieGate(self.workdir / "zombie")
        self.windows = self.workdir / "windows"
        self.windows.mkdir(exist_ok=True)

    @property
    def group(self) -> str:
        return str(self.config["kafka"]["group_id"])

    def start(self) -> None:
        self.processes = [self._spawn(i) for i in range(self.members)]

    def _spawn(self, slot: int) -> ConsumerProcess:
        name = f"member{slot}-run{self.kills + self.freezes}"
        module = ["tests.support.chaos_member"]
        if self.defect is not None:
            module += ["--defect", self.defect]
        env = {**self.env, "CHAOS_ZOMBIE_DIR": str(self.gate.directory),
               "CHAOS_WINDOW_DIR": str(self.windows)}
        config = self.slot_configs.get(slot, self.config)
        return ConsumerProcess(self.workdir, name, config, env=env, module=module).start()

    def kill_one(self) -> None:
        slot = self._aimed_slot() if self.aim_at_windows else self.rng.randrange(self.members)
        self.processes[slot].kill()
        self.kills += 1
        self.processes[slot] = self._spawn(slot)

    def _aimed_slot(self) -> int:
        """A member inside its crash window (it writes ``window-PID`` there and then)."""
        found: list[int] = []

        def in_window() -> bool:
            for slot, process in enumerate(self.processes):
                pid = process.process.pid if process.process is not None else -1
                if process.alive() and (self.windows / f"window-{pid}").exists():
                    found.append(slot)
                    return True
            return False

        wait_for(in_window, timeout=60, what=f"a member inside its crash window ({self.logs()})",
                 interval=0.005)
        return found[0]

    def make_zombie(self, store: StoreUnderTest, *, timeout: float = 90) -> Zombie:
        """One member stops itself holding a polled, unapplied batch; the group moves on and
        the new owners checkpoint past that batch; then it continues into its checkpoint.
        Returns it once its late checkpoint has an outcome (committed, or fenced)."""
        self.gate.request()
        zombie = self.gate.wait_frozen(timeout=timeout, what=self.logs())
        self.freezes += 1
        self.zombie = zombie
        zombie.process_name = next(
            (p.name for p in self.processes
             if p.process is not None and p.process.pid == zombie.pid), "?")

        def overtaken() -> bool:
            self.restart_dead()  # someone must be there to take over (the zombie is alive)
            self.zombie_open_transactions = max(self.zombie_open_transactions,
                                                zombie.open_transactions(store))
            return zombie.overtaken(store, self.group)

        wait_for(overtaken, timeout=timeout, interval=0.2,
                 what=f"the group to take over and pass the zombie's batch {zombie.rows}")
        zombie.release()
        wait_for(lambda: zombie.outcome() is not None, timeout=timeout,
                 what=f"the zombie's late checkpoint to end ({self.logs()})")
        return zombie

    def restart_dead(self) -> None:
        for slot, process in enumerate(self.processes):
            if not process.alive():
                self.processes[slot] = self._spawn(slot)

    def stop(self) -> None:
        for process in self.processes:
            if process.alive():
                process.signal(signal.SIGTERM)
        for process in self.processes:
            if process.process is not None and process.alive():
                try:
                    process.wait(timeout=30)
                except AssertionError:
                    process.kill()

    def logs(self) -> str:
        return "\n---\n".join(p.log_tail(8) for p in self.processes)

    def log_of(self, name: str) -> str:
        path = self.workdir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""


def until_consumed(store: StoreUnderTest, bootstrap: str, group: str, topics: Sequence[str],
                   *, timeout: float, what: str, tend: Chaos | None = None) -> None:
    """Until every partition of ``topics`` is consumed to its end by ``group``: its store row,
    or (for a consumer that trusts Kafka) its Kafka offset, has reached the log end. With
    ``tend``, its members that died (fenced, or a broken variant's crash) are restarted."""
    ends = {(topic, p): end for topic in topics
            for p, end in end_offsets(bootstrap, topic).items()}

    def consumed() -> bool:
        if tend is not None:
            tend.restart_dead()
        try:
            rows = dict(((t, p), o) for t, p, o in store.query(
                'SELECT topic, "partition", next_offset FROM consumer_checkpoints '
                "WHERE group_id = %s", (group,)))
        except Exception:  # The tables appear with the first consumer.
            rows = {}
        behind = [tp for tp, end in ends.items() if (rows.get(tp) or 0) < end]
        for topic in {t for t, _ in behind}:
            partitions = sum(1 for t, _ in ends if t == topic)
            kafka = group_offsets(bootstrap, group, topic, partitions)
            behind = [tp for tp in behind if tp[0] != topic or (kafka.get(tp[1]) or 0) < ends[tp]]
        return not behind

    wait_for(consumed, timeout=timeout, what=what, interval=0.5)


def until_applied(store: StoreUnderTest, ledger: Ledger, *, timeout: float,
                  what: str) -> None:
    want = len(ledger.events)

    def done() -> bool:
        try:
            return bool(store.scalar("SELECT count(DISTINCT event) FROM ledger_entries") >= want)
        except Exception:  # The table appears with the first batch.
            return False

    wait_for(done, timeout=timeout, what=what, interval=0.5)


def run_chaos(runs: list[Chaos], store: StoreUnderTest, *, kills: int,
               zombie: bool = True, zombie_first: bool = False) -> None:
    """Kill a random member each time a random share of the remaining messages is consumed
    (so the kills spread over the whole run); once a fifth is consumed, make the first group's
    zombie (unless told not to), early enough that its partitions have messages after it.
    With ``zombie_first``, the zombie comes before any kill, at the first checkpoint a member
    takes: a consumer fast enough to read the whole log between two looks at its progress
    (a small log, no keys) may leave no checkpoint with messages after it by the time a fifth
    is seen consumed. Progress is read from checkpoint rows, not from effects, so a consumer
    that loses effects (or moves a row back) still gets to the end."""
    consumed = _Consumed(store, runs)
    total = sum(_log_ends(run) for run in runs)
    rng = runs[0].rng
    for run in runs:
        run.start()
    zombies = 0 if zombie else 1
    if zombies == 0 and zombie_first:
        runs[0].make_zombie(store)
        zombies = 1
    while sum(run.kills for run in runs) + zombies < kills + 1:
        done = consumed()
        left = kills + 1 - sum(run.kills for run in runs) - zombies
        share = max(1, (total - done) // (left + 2))
        target = min(total - 1, done + rng.randint(1, 2 * share))
        wait_for(lambda t=target: consumed() >= t,  # type: ignore[misc]
                 timeout=120, interval=0.05,
                 what=f"progress to {target} of {total} ({runs[0].logs()})")
        for run in runs:
            run.restart_dead()
        killed = sum(run.kills for run in runs)
        if zombies == 0 and (consumed() >= total // 5 or killed >= kills):
            runs[0].make_zombie(store)
            zombies = 1
        else:
            rng.choice(runs).kill_one()
    for run in runs:
        run.restart_dead()


def _log_ends(run: Chaos) -> int:
    """How many offsets the run's group has to consume: the log ends of its routes' topics."""
    bootstrap = str(run.config["kafka"]["bootstrap_servers"])
    return sum(sum(end_offsets(bootstrap, topic).values()) for topic in run.config["routes"])


class _Consumed:
    """How far the groups got, added up over partitions: each partition at the highest offset
    seen in its store row or (a consumer that trusts Kafka) in Kafka, read once a second. A
    row a zombie moved back, or one left behind Kafka, was consumed that far all the same."""

    def __init__(self, store: StoreUnderTest, runs: list[Chaos]) -> None:
        self._store = store
        self._runs = runs
        self._highest: dict[tuple[str, str, int], int] = {}
        self._kafka_read_at = 0.0

    def __call__(self) -> int:
        groups = [run.group for run in self._runs]
        marks = ", ".join(["%s"] * len(groups))
        try:
            rows = self._store.query(
                'SELECT group_id, topic, "partition", next_offset FROM consumer_checkpoints '
                f"WHERE group_id IN ({marks})", tuple(groups))
        except Exception:  # No consumer has started yet: the table does not exist.
            rows = []
        if time.monotonic() - self._kafka_read_at > 1.0:
            self._kafka_read_at = time.monotonic()
            rows += self._kafka_offsets()
        for group, topic, partition, offset in rows:
            key = (group, topic, partition)
            self._highest[key] = max(self._highest.get(key, 0), offset or 0)
        return sum(self._highest.values())

    def _kafka_offsets(self) -> list[tuple[str, str, int, int | None]]:
        found = []
        for run in self._runs:
            bootstrap = str(run.config["kafka"]["bootstrap_servers"])
            for topic in run.config["routes"]:
                partitions = len(end_offsets(bootstrap, topic))
                offsets = group_offsets(bootstrap, run.group, topic, partitions)
                found += [(run.group, topic, p, o) for p, o in offsets.items()]
        return found


def assert_fenced(chaos: Chaos) -> None:
    """The run's zombie attempted its late checkpoint and it was refused: by the epoch fence,
    or, on MariaDB, by InnoDB choosing the late transaction as the victim of a deadlock with
    the new owner's, which rolls it back whole (seen once in many runs). A member frozen past
    its poll interval has lost its partitions and does not try that batch again; the
    exactly-once verdict, asserted before this, shows nothing of it committed."""
    zombie = chaos.zombie
    assert zombie is not None
    log = chaos.log_of(zombie.process_name)
    outcome = zombie.outcome()
    url = str(chaos.config.get("store", {}).get("url", ""))
    if (outcome == "StoreUnavailable" and url.startswith("mysql")
            and "deadlock; the batch rolled back" in zombie.outcome_reason()):
        return
    assert outcome == "Fenced", log[-3000:]
    assert "fenced on" in log, log[-3000:]


def assert_exact_after_chaos(store: StoreUnderTest, ledger: Ledger, group: str, chaos: Chaos,
                             *, kills: int) -> Verdict:
    """The closing verdict of a healthy consumer's chaos: every event was applied exactly
    once with no checkpoint row moved back (audited), the processed keys number the distinct
    events, at least ``kills`` SIGKILLs and one freeze happened, and the zombie's late
    checkpoint was refused (:func:`assert_fenced`)."""
    verdict = check(store, ledger, group, audited=True)
    assert verdict.exact, verdict
    assert verdict.processed_keys == len(ledger.events), verdict
    assert chaos.kills >= kills and chaos.freezes == 1, (chaos.kills, chaos.freezes)
    assert_fenced(chaos)
    return verdict
