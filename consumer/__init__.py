"""checkpoint-consumer: a Kafka consumer that resumes from its last checkpoint."""

__version__ = "0.1.0"
