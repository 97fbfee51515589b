"""Routes with concurrency, without a store: per-partition finished offsets (the watermark with
gaps), lanes that keep a route's ordering, the workers (a thread pool, an asyncio loop), and the
dispatcher that joins them on the poll thread."""
