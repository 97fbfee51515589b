"""A Bloom filter of processed keys, held in memory by one store member.

It answers "may this key be held?" without a database read: never "no" for a key added to it,
and "yes" for a small share of the others (about 0.15% at :data:`BITS_PER_KEY` bits a key and
three probes). The stores ask it about each key of a batch before claiming; only the keys it
flags are looked up in the database (:mod:`consumer.store.key_generations`).

The probes come from Python's own hash of the key (SipHash, keyed per process: the filter never
leaves the process), split into two 32-bit halves and combined as ``h1 + i * h2``: one hash per
key, whatever the key's form (a digest, or an ordered coordinates key whose first bytes every
key of a topic shares).
"""

from __future__ import annotations

from collections.abc import Iterable

#: Bits a key at the filter's capacity: three probes then flag about 0.15% of fresh keys.
BITS_PER_KEY = 24
#: The fewest keys a filter is sized for (3 MB at 24 bits a key).
MIN_CAPACITY = 1_000_000
_LOW32 = 0xFFFF_FFFF
_HASH64 = 0xFFFF_FFFF_FFFF_FFFF


class KeyFilter:
    """A Bloom filter sized for ``capacity`` keys (a power of two bits, three probes). It goes
    on answering past its capacity, flagging more fresh keys as it fills (``full`` says when to
    start another)."""

    __slots__ = ("_bits", "_mask", "added", "capacity")

    def __init__(self, capacity: int) -> None:
        self.capacity = max(MIN_CAPACITY, capacity)
        size = 1 << (self.capacity * BITS_PER_KEY - 1).bit_length()
        self._bits = bytearray(size >> 3)
        self._mask = size - 1
        #: Keys added (a key added twice counts twice).
        self.added = 0

    @property
    def full(self) -> bool:
        return self.added >= self.capacity

    @property
    def nbytes(self) -> int:
        return len(self._bits)

    def add(self, keys: Iterable[bytes]) -> int:
        """Adds the keys; how many."""
        bits, mask = self._bits, self._mask
        added = 0
        for key in keys:
            h = hash(key) & _HASH64
            h1, h2 = h & _LOW32, (h >> 32) | 1
            p = h1 & mask
            bits[p >> 3] |= 1 << (p & 7)
            p = (h1 + h2) & mask
            bits[p >> 3] |= 1 << (p & 7)
            p = (h1 + 2 * h2) & mask
            bits[p >> 3] |= 1 << (p & 7)
            added += 1
        self.added += added
        return added

    def may_hold(self, key: bytes) -> bool:
        """False only for a key never added."""
        bits, mask = self._bits, self._mask
        h = hash(key) & _HASH64
        h1, h2 = h & _LOW32, (h >> 32) | 1
        p = h1 & mask
        if not bits[p >> 3] >> (p & 7) & 1:
            return False
        p = (h1 + h2) & mask
        if not bits[p >> 3] >> (p & 7) & 1:
            return False
        p = (h1 + 2 * h2) & mask
        return bool(bits[p >> 3] >> (p & 7) & 1)
