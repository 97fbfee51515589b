"""The checkpoint protocol: when one is due (``policy``), each partition's progress
(``progress``), and the two ways to take one: offsets to Kafka only (``kafka_only``), or one
store transaction and then Kafka (``store_batch``).

Called by the engine, on the poll thread only. Reaches Kafka through
:class:`~consumer.kafka.protocol.Source` and the database through
:class:`~consumer.store.Store`, never a client library; reads only the time it is given.
Raises ``Fenced``, ``OffsetWentBackwards``, ``HandlerFailed``, ``KafkaError`` or ``StoreError``.
"""
