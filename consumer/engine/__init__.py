"""The consumer loop and what it alone owns: polling, routing, pausing and resuming,
rebalance callbacks, the stop request and shutdown; done work goes to the checkpoint mode
chosen at wiring time (Kafka only, or store transactions).

One thread runs the loop; it owns the Kafka client and every partition's state, and rebalance
and commit callbacks arrive inside ``poll`` on it. Other threads (HTTP, signal handlers) only
read :mod:`~consumer.engine.snapshot` views or set the :mod:`~consumer.engine.stopping` flag.
"""
