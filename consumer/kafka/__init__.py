"""The only package that imports confluent_kafka: the source the loop polls, the dead-letter
producer, admin reads and writes for the commands, and the protocols (``protocol``) the layers
above program against, so everything above also runs on :mod:`consumer.testing`'s fakes.

Client errors become :class:`~consumer.errors.KafkaError` at this border: nothing above sees a
confluent_kafka type. Imports only the vocabulary (message, errors, settings).
"""
