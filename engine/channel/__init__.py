"""Channels: source → accept → filter → mapping → handlers → outbox, one transaction a message."""
