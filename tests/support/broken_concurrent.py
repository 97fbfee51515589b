"""`consumer run` with concurrency and one guarantee removed, to show the ledger checker catches
it: ``no-claim`` makes each message's key claim (alone or in a micro-batch) a no-op (every
message counts as new, no key is recorded), so a message read again (re-sent, or above the row
after a crash) is applied again.

    python -m tests.support.broken_concurrent run --config FILE
    python -m tests.support.chaos_member --defect no-claim run --config FILE   (zombie gate)
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import consumer.store.postgres_pool as pool
from consumer.cli import main
from consumer.store.base import Claim


def no_claim() -> None:
    """Every claim of a row (both pools look ``row_claim`` up in the module) records nothing
    and answers every key "new"."""

    def unrecorded(group: str, claims: Sequence[Claim], now: float,
                   view: tuple[int, tuple[int, ...]]) -> tuple[str, dict[str, Any]]:
        return ("SELECT decode(k, 'hex') FROM unnest(string_to_array(%(k)s, ',')) AS u(k)",
                {"k": ",".join(c.key.hex() for c in claims)})

    pool.row_claim = unrecorded


if __name__ == "__main__":
    no_claim()
    sys.exit(main(sys.argv[1:]))
