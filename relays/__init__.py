"""Relays: follow a MongoDB collection's change stream and carry each change to Kafka or object storage."""
