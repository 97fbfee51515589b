"""What happens to a message whose handler raised, or whose value or dedup key is poison:
retry later (its partition paused, the loop polling on), dead-letter it, or stop.

Called on the poll thread by the code that runs handlers. It decides and keeps the retry
schedule; it never sleeps (a wait is a paused partition and a due time) and never commits
offsets. A dead letter goes out through :class:`~consumer.kafka.protocol.DeadLetterSink`,
which blocks until the broker acknowledges it or raises ``DeadLetterFailed``.
"""
