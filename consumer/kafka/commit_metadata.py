"""What a commit's metadata says: the marker, and the messages above the offset already finished.

Every commit of ours carries :data:`~consumer.kafka.protocol.COMMIT_MARKER` (so a reset made
with Kafka's own tools, which leave none, is detectable). With handlers running concurrently a
partition's committed offset is its watermark, the lowest unfinished message, and messages
above it often finished first (the gap); the offset alone makes the partition's next owner (a
restart, or another member after a rebalance) handle them again. So such a commit says which
ones finished, after the marker::

    checkpoint-consumer/1;gap=<base>:<bitmap>

``<base>`` is an offset at or below the committed one; ``<bitmap>`` is base64 of a
zlib-compressed bitmap whose bit ``i`` (bit ``i % 8`` of byte ``i // 8``) says offset
``base + i`` finished. Offsets holding no message (transaction markers, compaction) are simply
not set. The broker caps a commit's metadata (``offset.metadata.max.bytes``, 4,096 by
default): a gap whose text would pass :data:`GAP_LIMIT` characters is left out, and its
messages are handled again, as without it. Pure functions; they never raise on what another
tool (or an older version) wrote: what they cannot read says nothing finished.
"""

from __future__ import annotations

import base64
import binascii
import zlib
from collections.abc import Collection

from consumer.kafka.protocol import COMMIT_MARKER

GAP_TAG = ";gap="
#: Characters of metadata at most (the broker's default cap is 4,096 bytes).
GAP_LIMIT = 3_500
#: A bitmap spanning more offsets than this is not built at all (over 1 MB of bitmap).
SPAN_LIMIT = 8 * 1024 * 1024


def is_ours(metadata: str | None) -> bool:
    """Whether a commit was made by checkpoint-consumer (with or without a gap)."""
    return metadata == COMMIT_MARKER or (
        metadata is not None and metadata.startswith(COMMIT_MARKER + GAP_TAG))


def with_gap(base: int, finished: Collection[int]) -> str:
    """The metadata of a commit at ``base`` (or above) whose partition finished ``finished``
    (offsets below ``base`` are left out): the marker alone when nothing finished, or when
    the gap would not fit in :data:`GAP_LIMIT` characters."""
    if not finished:
        return COMMIT_MARKER
    span = max(finished) - base + 1
    if span <= 0 or span > SPAN_LIMIT:
        return COMMIT_MARKER
    bitmap = bytearray((span + 7) >> 3)
    for offset in finished:
        index = offset - base
        if index >= 0:
            bitmap[index >> 3] |= 1 << (index & 7)
    text = base64.b64encode(zlib.compress(bitmap, 1)).decode("ascii")
    metadata = f"{COMMIT_MARKER}{GAP_TAG}{base}:{text}"
    return metadata if len(metadata) <= GAP_LIMIT else COMMIT_MARKER


def finished_in(metadata: str | None, committed: int) -> set[int]:
    """The offsets at or above ``committed`` that a commit's metadata says finished (empty
    when it says none, or is not ours, or cannot be read)."""
    if metadata is None or not metadata.startswith(COMMIT_MARKER + GAP_TAG):
        return set()
    try:
        base_text, _, text = metadata[len(COMMIT_MARKER) + len(GAP_TAG):].partition(":")
        base = int(base_text)
        inflate = zlib.decompressobj()
        bitmap = inflate.decompress(base64.b64decode(text, validate=True), SPAN_LIMIT // 8 + 1)
    except (ValueError, binascii.Error, zlib.error):
        return set()
    if len(bitmap) * 8 > SPAN_LIMIT or not inflate.eof:
        return set()
    finished = set()
    for byte_index, byte in enumerate(bitmap):
        if byte:
            for bit in range(8):
                if byte >> bit & 1:
                    offset = base + (byte_index << 3) + bit
                    if offset >= committed:
                        finished.add(offset)
    return finished
