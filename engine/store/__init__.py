"""Persistence: schema, database engines, writer, repositories and migrations."""
