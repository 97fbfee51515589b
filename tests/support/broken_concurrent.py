"""`consumer run` with concurrency and one guarantee removed, to show the ledger checker catches
it: ``no-claim`` makes each message's key claim (alone or in a micro-batch) a no-op (every
message counts as new, no key is recorded), so a message read again (re-sent, or above the row
after a crash) is applied again.

    python -m tests.support.broken_concurrent run --config FILE
    python -m tests.support.chaos_member --defect no-claim run --config FILE   (zombie gate)
"""

from __future__ import annotations

import sys

import consumer.store.postgres_pool as pool
from consumer.cli import main


def no_claim() -> None:
    #: Takes the claim's six parameters, records nothing, and always answers "new".
    pool.CLAIM_ONE = "SELECT 1 FROM (SELECT %s, %s, %s, %s, %s, %s) AS unclaimed"
    #: A micro-batch's claim: the same parameters, every key answered "new", none recorded.
    pool.CLAIM_MANY = """SELECT decode(k, 'hex') FROM (SELECT %s::text, %s::float8) AS unclaimed,
                         unnest(string_to_array(%s, ','), string_to_array(%s, ','),
                                string_to_array(%s, ',')::integer[],
                                string_to_array(%s, ',')::bigint[]) AS u(k, t, p, o)"""


if __name__ == "__main__":
    no_claim()
    sys.exit(main(sys.argv[1:]))
