"""Which processed keys a store keeps as runs, and a batch's runs: the Python side of the stores
whose runs several writers claim at once (consumer.store.postgres_runs; each store's module says
what keeps its runs exact).

An ordered coordinates key (consumer.dedup) is its topic (8 bytes), partition (2) and offset (6),
big-endian, so a batch's messages of consecutive offsets of one partition have consecutive keys:
a run, kept as one row. Its first 10 bytes are the run's head; the last 6, its key offsets.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from consumer.dedup import OrderedPrefixes
from consumer.store.base import ORDERED_COORDINATES, RUN_COORDINATES, Claim
from consumer.store.claim_batch import ClaimBatch

_HEAD = 10  # bytes of topic and partition
_KEY = 16


class CoordinatesKeys:
    """Tells the claims whose key is an ordered coordinates key of their message's topic
    (kept as runs) from the rest. Reads the topic ids the key functions read (see
    :meth:`consumer.store.base.Store.use_topic_ids`), so it names a topic as they do.
    ``as_runs`` is set once the store's schema says it keeps runs; shared by the store and
    its message transactions, which are made before that."""

    __slots__ = ("_prefixes", "as_runs")

    def __init__(self) -> None:
        self.as_runs = False
        self._prefixes = OrderedPrefixes({})

    @property
    def topic_ids(self) -> Mapping[str, str]:
        return self._prefixes.topic_ids

    @topic_ids.setter
    def topic_ids(self, topic_ids: Mapping[str, str]) -> None:
        self._prefixes.topic_ids = topic_ids

    def prefix(self, topic: str) -> bytes:
        return self._prefixes.of(topic)

    def holds(self, claim: Claim) -> bool:
        """Whether the store keeps this claim's key in a run."""
        key = claim.key
        return self.as_runs and len(key) == _KEY and key[:8] == self.prefix(claim.topic)


class KeepsRuns(abc.ABC):
    """What a server store (PostgreSQL, MariaDB) keeps to know whether its keys go to runs:
    its :class:`CoordinatesKeys` (told the topic ids), and whether its database has a runs
    table. Call :meth:`_init_runs` in ``__init__`` and :meth:`_read_form` once the schema is
    ensured; list it before ``Store`` among the bases (it replaces ``use_topic_ids``)."""

    _coordinates_keys: CoordinatesKeys
    _runs_table: bool | None
    ordered_coordinates: bool

    def _init_runs(self) -> None:
        #: Whether ordered coordinates keys are claimed as runs: set by _read_form.
        self._coordinates_keys = CoordinatesKeys()
        #: Whether the store has a runs table (None: not known yet, see _runs).
        self._runs_table = None

    def use_topic_ids(self, topic_ids: Mapping[str, str]) -> None:
        self._coordinates_keys.topic_ids = topic_ids

    def _read_form(self, form: str | None) -> None:
        """The schema's ``coordinates_keys``: whether keys go to runs, and their order."""
        self._coordinates_keys.as_runs = self._runs_table = form == RUN_COORDINATES
        self.ordered_coordinates = form in (ORDERED_COORDINATES, RUN_COORDINATES)

    @property
    def _runs(self) -> bool:
        """Whether the store has runs to look at: known from the schema's form, else asked
        once (`consumer replay` and the purger open a store without ensuring its schema)."""
        if self._runs_table is None:
            self._runs_table = self._has_runs_table()
        return self._runs_table

    @abc.abstractmethod
    def _has_runs_table(self) -> bool:
        """Ask the database whether ``consumer_processed_runs`` exists."""


@dataclass(slots=True)
class Run:
    """Consecutive keys (offsets ``low`` to ``high`` - 1 after ``head``) of messages at
    consecutive offsets of one partition, from ``first_offset``."""

    head: bytes
    low: int
    high: int
    topic: str
    partition: int
    first_offset: int

    def key_list(self, low: int | None = None, high: int | None = None) -> list[bytes]:
        """The run's keys (those of key offsets ``low`` to ``high`` - 1 of it)."""
        head = self.head
        return [head + offset.to_bytes(6, "big")
                for offset in range(self.low if low is None else low,
                                    self.high if high is None else high)]

    def singles(self) -> list[Run]:
        return [Run(self.head, low, low + 1, self.topic, self.partition,
                    self.first_offset + low - self.low) for low in range(self.low, self.high)]


def split(claims: Sequence[Claim], keys: CoordinatesKeys) -> tuple[list[Run], list[Claim]]:
    """The batch's ordered coordinates keys as runs (a partition's stretch continues across
    other partitions' messages), and the other claims (every claim, where the store keeps
    no runs). Runs every message of a batch: the
    common case, the next key of the run in hand, costs one conversion and four comparisons
    (a key one above a coordinates key of the same partition is one too: offsets stay far
    below the partition bytes)."""
    if not keys.as_runs:
        return [], list(claims)
    runs: list[Run] = []
    others: list[Claim] = []
    open_runs: dict[bytes, Run] = {}
    prefixes: dict[str, bytes] = {}
    from_bytes = int.from_bytes
    # The run in hand: the next key and offset that continue it, its partition and topic.
    next_key = next_offset = partition = -1
    topic = ""
    run = Run(b"", 0, 0, "", -1, -1)
    for claim in claims:
        key = claim.key
        if claim.offset == next_offset and from_bytes(key, "big") == next_key \
                and claim.partition == partition and claim.topic == topic:
            run.high += 1
            next_key += 1
            next_offset += 1
            continue
        prefix = prefixes.get(claim.topic)
        if prefix is None:
            prefix = prefixes[claim.topic] = keys.prefix(claim.topic)
        if len(key) != _KEY or key[:8] != prefix:
            others.append(claim)
            continue
        head, low = key[:_HEAD], from_bytes(key[_HEAD:], "big")
        found = open_runs.get(head)
        if found is not None and found.high == low and found.topic == claim.topic \
                and found.partition == claim.partition \
                and found.first_offset + (found.high - found.low) == claim.offset:
            run = found
        else:
            run = open_runs[head] = Run(head, low, low, claim.topic, claim.partition,
                                        claim.offset)
            runs.append(run)
        run.high += 1
        partition, topic = run.partition, run.topic
        next_key, next_offset = from_bytes(key, "big") + 1, claim.offset + 1
    return runs, others


def stretch_runs(claims: Sequence[Claim], keys: CoordinatesKeys) -> list[Run] | None:
    """A :class:`ClaimBatch`'s stretches as runs, where the store keeps runs and names each
    stretch's topic as the key functions did (else None: :func:`split` the claims, as other
    claims and an empty batch are)."""
    if not isinstance(claims, ClaimBatch) or not keys.as_runs or not claims.stretches:
        return None
    runs = []
    for stretch in claims.stretches:
        if stretch.prefix != keys.prefix(stretch.topic):
            return None
        head = stretch.prefix + stretch.partition.to_bytes(2, "big")
        runs.append(Run(head, stretch.first, stretch.end, stretch.topic, stretch.partition,
                        stretch.first))
    return runs


def new_keys(runs: Sequence[Run], found: set[bytes] | None) -> set[bytes]:
    """What a claim of ``runs`` found new, as keys: ``found``, or None for every key of every
    run (as the stores' run claims answer)."""
    return found if found is not None else {key for run in runs for key in run.key_list()}


def head_and_offset(key: bytes) -> tuple[bytes, int]:
    """Where a run would hold ``key``."""
    return key[:_HEAD], int.from_bytes(key[_HEAD:], "big")


