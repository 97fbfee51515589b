"""A Bloom filter of processed keys, held in memory by one store member.

It answers "may this key be held?" without a database read: never "no" for a key added to it,
and "yes" for a small share of the others (about 0.15% at :data:`BITS_PER_KEY` bits a key and
three probes). The stores ask it about each key of a batch before claiming; only the keys it
flags are looked up in the database (:mod:`consumer.store.key_generations`).

The probes come from Python's own hash of the key (SipHash, keyed per process: the filter never
leaves the process), whatever the key's form (a digest, or an ordered coordinates key whose
first bytes every key of a topic shares). The filter is *blocked*: the hash's low half picks a
64-byte block, its high half three bits within it, so a key costs one cache line instead of
three (a filter of millions of keys is tens of megabytes: each probe of an unblocked one was a
miss to memory).
"""

from __future__ import annotations

from collections.abc import Iterable

#: Bits a key at the filter's capacity: three probes then flag about 0.15% of fresh keys.
BITS_PER_KEY = 24
#: The fewest keys a filter is sized for (3 MB at 24 bits a key).
MIN_CAPACITY = 1_000_000
_HASH64 = 0xFFFF_FFFF_FFFF_FFFF
#: A block: one cache line.
_BLOCK_BYTES = 64
_BLOCK_BITS = _BLOCK_BYTES * 8


class KeyFilter:
    """A blocked Bloom filter sized for ``capacity`` keys (a power of two 512-bit blocks, three
    probes). It goes on answering past its capacity, flagging more fresh keys as it fills
    (``full`` says when to start another)."""

    __slots__ = ("_bits", "_blocks", "added", "capacity")

    def __init__(self, capacity: int) -> None:
        self.capacity = max(MIN_CAPACITY, capacity)
        blocks = 1 << (-(-self.capacity * BITS_PER_KEY // _BLOCK_BITS) - 1).bit_length()
        self._bits = bytearray(blocks * _BLOCK_BYTES)
        self._blocks = blocks - 1
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
        bits, blocks = self._bits, self._blocks
        added = 0
        for key in keys:
            h = hash(key) & _HASH64
            base = (h & blocks) << 6
            h >>= 32
            p = h & 511
            bits[base + (p >> 3)] |= 1 << (p & 7)
            p = (h >> 9) & 511
            bits[base + (p >> 3)] |= 1 << (p & 7)
            p = (h >> 18) & 511
            bits[base + (p >> 3)] |= 1 << (p & 7)
            added += 1
        self.added += added
        return added

    def may_hold(self, key: bytes) -> bool:
        """False only for a key never added."""
        bits = self._bits
        h = hash(key) & _HASH64
        base = (h & self._blocks) << 6
        h >>= 32
        p = h & 511
        if not bits[base + (p >> 3)] >> (p & 7) & 1:
            return False
        p = (h >> 9) & 511
        if not bits[base + (p >> 3)] >> (p & 7) & 1:
            return False
        p = (h >> 18) & 511
        return bool(bits[base + (p >> 3)] >> (p & 7) & 1)
