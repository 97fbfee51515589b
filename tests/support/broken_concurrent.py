"""`consumer run` with concurrency and one guarantee removed, to show the ledger checker catches
it: ``no-claim`` makes each message's key claim a no-op (every message counts as new, no key is
recorded), so a message read again (re-sent, or above the row after a crash) is applied again.

    python -m tests.support.broken_concurrent run --config FILE
"""

from __future__ import annotations

import sys

import consumer.store.postgres_pool as pool
from consumer.cli import main

#: Takes the claim's six parameters, records nothing, and always answers "new".
pool.CLAIM_ONE = "SELECT 1 FROM (SELECT %s, %s, %s, %s, %s, %s) AS unclaimed"

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
