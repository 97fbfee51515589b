"""The checkpoint protocol: when to take one, each partition's progress, and the two ways to
take it (offsets to Kafka only, or a store transaction followed by Kafka)."""
