"""What happens to a message whose handler raised: retries with backoff, dead letters, stop;
and the vocabulary of a dead letter."""
