"""The consumer loop: poll, route, hand messages to the checkpoint mode, react to rebalances,
stop; and the read-only snapshots it gives observers."""
