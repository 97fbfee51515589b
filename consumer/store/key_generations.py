"""Generations of a group's processed keys, and what one member knows of them.

A store keeps each group's processed keys in generations: a number in the key table's primary
key, ``(group_id, generation, key)``. Claims write only the group's *current* generation. Once
it holds :data:`GENERATION_KEYS` keys it is *sealed* (written no more) and a new one starts.
So a batch's keys land among the current generation's index pages, few enough to stay cached,
however many keys the older generations hold: with one index over every key, each digest key
of a batch dirtied a page of its own once the index outgrew the cache, and claims slowed as
the table grew. The retention drops a sealed generation whole once it is past, instead of
deleting its keys one by one.

The primary key no longer stops a key claimed in one generation from being claimed again in
the next. :class:`GroupKeys` holds Bloom filters (:class:`consumer.store.key_filter.KeyFilter`)
of every key in the group's sealed generations; a claim asks the database only about the keys
they flag (about 0.15%). What a member knows is checked against the generations table in every
batch's transaction: each generation counts the keys ever claimed into it, so a sealed
generation holding keys the filters lack (claimed by another member, or before this one
started) is read into them before any claim.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

from consumer.settings import StoreSettings
from consumer.store.key_filter import KeyFilter

#: Keys a generation holds before it is sealed (``store.sqlite_generation_keys``). A million
#: digest keys (about 120 MB of table and indexes in SQLite) keep a claim's index pages mostly
#: cached.
GENERATION_KEYS: int = StoreSettings.model_fields["sqlite_generation_keys"].default
#: A generation also holds at least this share of the group's keys before it is sealed, so a
#: group keeps about this many generations however many keys its retention holds: a flagged
#: key and an unclaim seek each generation, and every claim reads the list of them.
GENERATIONS_KEPT = 16


@dataclass(frozen=True, slots=True)
class Generation:
    """One generation as the database holds it: its number, the keys ever claimed into it
    (keys forgotten since still count), and whether it is sealed."""

    number: int
    keys: int
    sealed: bool


class _Held:
    """A filter, and the newest generation whose keys it holds."""

    __slots__ = ("filter", "through")

    def __init__(self, capacity: int) -> None:
        self.filter = KeyFilter(capacity)
        self.through = -1


#: The length of the keys kept joined (consumer.dedup's digests): a generation's unfiltered
#: keys here, and a page of a generation as the MariaDB store reads it.
KEY_BYTES = 16


def split_keys(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """The keys of joined 16-byte keys."""
    for chunk in chunks:
        for start in range(0, len(chunk), KEY_BYTES):
            yield chunk[start:start + KEY_BYTES]


#: Reads every key of one generation of the group (the store's query).
ReadGeneration = Callable[[int], Iterable[bytes]]


class GroupKeys:
    """One member's view of one group's generations, between and within batches.

    In each batch's transaction the store passes the generations table's rows to
    :meth:`refresh` before claiming, asks :meth:`flagged` which keys a sealed generation may
    hold, tells :meth:`claimed` the keys it inserted, and then :meth:`committed` or
    :meth:`rolled_back`. Filters are dropped once every generation they hold keys of is gone.
    """

    def __init__(self, generation_keys: int = GENERATION_KEYS) -> None:
        self.generation_keys = generation_keys
        self.current = -1
        self.sealed: tuple[int, ...] = ()
        self._held: list[_Held] = []
        #: Keys of each generation the filters hold: read, or claimed here and committed.
        self._known: dict[int, int] = {}
        #: What the open transaction taught: generations read, and keys claimed here. Known
        #: only once it commits: a rolled-back transaction may have seen rows that never were.
        self._read_open: dict[int, int] = {}
        self._pending: dict[int, list[bytes]] = {}
        #: Keys claimed here and committed that no filter holds yet, by generation, each
        #: batch's 16-byte keys joined in one bytes object: they go into a filter once their
        #: generation is sealed (a generation never sealed costs no filter work).
        self._unfiltered: dict[int, list[bytes]] = {}
        self._current_keys = 0
        #: Keys ever claimed into the group's generations still kept (their counts' sum).
        self._live_keys = 0
        #: Keys read from the database into the filters (all refreshes).
        self.read = 0

    @property
    def rotation_due(self) -> bool:
        """The current generation holds its share of keys (:attr:`due_keys`, as the open
        transaction counts them): seal it before claiming."""
        return self._current_keys >= self.due_keys

    @property
    def due_keys(self) -> int:
        """The current generation's share of keys: ``generation_keys``, and a
        :data:`GENERATIONS_KEPT`-th of the group's."""
        return max(self.generation_keys, self._live_keys // GENERATIONS_KEPT)

    @property
    def seal_overdue(self) -> int:
        """How far past due the current generation's seal is: 0 until the generation holds a
        quarter more keys than its share, then 1, and one more for each eighth of a generation
        beyond (a deferred seal is tried again once an eighth more keys came)."""
        late = self._current_keys - self.due_keys * 5 // 4
        return 0 if late < 0 else 1 + late // max(1, self.generation_keys // 8)

    @property
    def current_keys(self) -> int:
        """Keys in the current generation, as far as this member knows."""
        return self._current_keys

    def refresh(self, generations: Sequence[Generation], read: ReadGeneration) -> None:
        """Takes the generations as the open transaction sees them (oldest first, the last
        one current) and reads into the filters each sealed generation holding keys they
        lack."""
        if not generations or generations[-1].sealed:
            raise ValueError("a group's newest generation is its current one, never sealed")
        oldest = generations[0].number
        self._held = [held for held in self._held if held.through >= oldest]
        self._known = {n: keys for n, keys in self._known.items() if n >= oldest}
        live = sum(g.keys for g in generations)
        self.sealed = tuple(g.number for g in generations if g.sealed)
        sealed = set(self.sealed)
        for number in [n for n in self._unfiltered if n < oldest or n in sealed]:
            chunks = self._unfiltered.pop(number)
            if number in sealed:
                self._filter(live, number, split_keys(chunks))
        for generation in generations:
            number = generation.number
            known = self._read_open.get(number, self._known.get(number, 0))
            if generation.sealed and known < generation.keys:
                self.read += self._filter(live, number, read(number))
                self._read_open[number] = generation.keys
        self.current = generations[-1].number
        # a store counting claims at the seal (PostgreSQL) counts this member's own meanwhile
        self._current_keys = max(generations[-1].keys, self._known.get(self.current, 0))
        self._live_keys = live

    def _filter(self, live: int, number: int, keys: Iterable[bytes]) -> int:
        """Adds keys of generation ``number`` to the newest filter; how many."""
        held = self._newest(live)
        held.through = max(held.through, number)
        return held.filter.add(keys)

    def _newest(self, live: int) -> _Held:
        """The filter keys go into: a new one once the newest is full."""
        if not self._held or self._held[-1].filter.full:
            self._held.append(_Held(max(live, 2 * self.generation_keys)))
        return self._held[-1]

    def flagged(self, keys: Iterable[bytes]) -> list[bytes]:
        """The keys a sealed generation may hold (none when there is none)."""
        if not self.sealed:
            return []
        tests = [held.filter.may_hold for held in self._held]
        if len(tests) == 1:
            test = tests[0]
            return [key for key in keys if test(key)]
        return [key for key in keys if any(test(key) for test in tests)]

    def claimed(self, keys: Sequence[bytes]) -> None:
        """The keys inserted into the current generation by the open transaction."""
        if keys:
            self._pending.setdefault(self.current, []).extend(keys)

    def committed(self) -> None:
        self._known.update(self._read_open)
        for number, keys in self._pending.items():
            self._known[number] = self._known.get(number, 0) + len(keys)
            if number == self.current:
                self._current_keys += len(keys)
            whole = [key for key in keys if len(key) == KEY_BYTES]
            if len(whole) < len(keys):  # not a 16-byte key: into a filter now
                self._filter(self._current_keys,
                             number, [key for key in keys if len(key) != KEY_BYTES])
            self._unfiltered.setdefault(number, []).append(b"".join(whole))
        self._read_open.clear()
        self._pending.clear()

    def rolled_back(self) -> None:
        """What the open transaction read or claimed is not known to be in the database
        (what it added to the filters stays: it only flags more)."""
        self._read_open.clear()
        self._pending.clear()

    def ended(self, *, committed: bool) -> None:
        """:meth:`committed` or :meth:`rolled_back`."""
        if committed:
            self.committed()
        else:
            self.rolled_back()

    @property
    def filter_bytes(self) -> int:
        return sum(held.filter.nbytes for held in self._held)
