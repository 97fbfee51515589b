"""The ledger chaos run: balance changes, consumer processes killed and frozen at random, and a
checker that compares the database with what was produced."""

from __future__ import annotations

import json
import random
import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from consumer_process import ConsumerProcess, wait_for

from tests.support.kafka import produce
from tests.support.stores import StoreUnderTest


@dataclass(frozen=True)
class Ledger:
    """What was produced: every event once, some of them again at a later offset."""

    events: list[dict[str, Any]]
    resent: list[int]

    @property
    def expected_balances(self) -> dict[str, int]:
        totals: Counter[str] = Counter()
        for event in self.events:
            totals[event["account"]] += event["amount"]
        return dict(totals)


def make_ledger(count: int, *, accounts: int = 50, resend_every: int = 100,
                seed: int = 7) -> Ledger:
    rng = random.Random(seed)
    events = [{"event": f"e{i}", "account": f"acc-{rng.randrange(accounts)}",
               "amount": rng.randint(-1000, 1000)} for i in range(count)]
    resent = list(range(0, count, resend_every))
    return Ledger(events, resent)


def produce_ledger(bootstrap: str, topic: str, ledger: Ledger) -> int:
    order = [*range(len(ledger.events)), *ledger.resent]
    return produce(
        bootstrap, topic,
        (json.dumps(ledger.events[i]).encode() for i in order),
        key=lambda n: ledger.events[order[n]]["account"].encode(),
        headers=lambda n: [("idempotency-key", ledger.events[order[n]]["event"].encode())],
    )


@dataclass
class Verdict:
    applied_entries: int
    distinct_events: int
    duplicated_events: int
    lost_events: int
    wrong_balances: dict[str, tuple[int, int]] = field(default_factory=dict)
    processed_keys: int = 0

    @property
    def exact(self) -> bool:
        return not (self.duplicated_events or self.lost_events or self.wrong_balances)


def check(store: StoreUnderTest, ledger: Ledger, group: str) -> Verdict:
    entries = store.scalar("SELECT count(*) FROM ledger_entries")
    distinct = store.scalar("SELECT count(DISTINCT event) FROM ledger_entries")
    balances = dict(store.query("SELECT id, balance FROM accounts"))
    wrong = {account: (balances.get(account, 0), want)
             for account, want in ledger.expected_balances.items()
             if balances.get(account, 0) != want}
    keys = store.scalar("SELECT count(*) FROM consumer_processed_keys WHERE group_id = %s",
                        (group,))
    return Verdict(entries, distinct, entries - distinct, len(ledger.events) - distinct, wrong,
                   keys)


@dataclass
class Chaos:
    """Keeps ``members`` consumer processes running while killing and freezing them."""

    workdir: Path
    config: dict[str, Any]
    members: int = 3
    env: dict[str, str] = field(default_factory=dict)
    module: list[str] = field(default_factory=lambda: ["consumer"])
    rng: random.Random = field(default_factory=random.Random)
    kills: int = 0
    freezes: int = 0
    processes: list[ConsumerProcess] = field(default_factory=list)

    def start(self) -> None:
        self.processes = [self._spawn(i) for i in range(self.members)]

    def _spawn(self, slot: int) -> ConsumerProcess:
        name = f"member{slot}-run{self.kills + self.freezes}"
        return ConsumerProcess(self.workdir, name, self.config, env=self.env,
                               module=self.module).start()

    def kill_one(self) -> None:
        slot = self.rng.randrange(self.members)
        self.processes[slot].kill()
        self.kills += 1
        self.processes[slot] = self._spawn(slot)

    def freeze_one(self, *, seconds: float) -> None:
        """SIGSTOP a member for ``seconds`` (longer than its session and max.poll.interval.ms,
        so the group moves on without it), then let it go on as a zombie. The freeze's length
        is the point of this step, so it is a plain sleep, not a wait for a condition."""
        victim = self.processes[self.rng.randrange(self.members)]
        victim.signal(signal.SIGSTOP)
        self.freezes += 1
        try:
            time.sleep(seconds)
        finally:
            victim.signal(signal.SIGCONT)

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


def until_applied(store: StoreUnderTest, ledger: Ledger, *, timeout: float,
                  what: str) -> None:
    want = len(ledger.events)

    def done() -> bool:
        try:
            return bool(store.scalar("SELECT count(DISTINCT event) FROM ledger_entries") >= want)
        except Exception:  # The table appears with the first batch.
            return False

    wait_for(done, timeout=timeout, what=what, interval=0.5)
