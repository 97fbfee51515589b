"""The only layer that knows the Kafka client: the consumer source, the dead-letter producer,
admin reads, and the protocols the layers above program against."""
