"""The durable outbox: per-destination queues with retry, ordering per key and dead letters."""
