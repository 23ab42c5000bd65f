"""Tables of the authorization server: registered clients and used assertion ids.

``auth_clients`` holds one row per registered client: ``client_id`` (random, what
the client sends), ``name`` (the operator's label), the authentication method
(``private_key_jwt`` with the client's public ``jwks``, or ``client_secret`` with
``secret_hash``; never a secret in clear) and the registered ``scopes``
(space-separated). ``auth_used_jtis`` remembers each accepted assertion's ``jti``
until the assertion expires, so a replay is refused by every engine sharing the
database (RFC 7523 3, item 7).
"""

from __future__ import annotations

from sqlalchemy import Column, Index, PrimaryKeyConstraint, String, Table, Text

from engine.store.schema import Id, UTCDateTime, metadata

__all__ = ["auth_clients", "auth_used_jtis"]

auth_clients = Table(
    "auth_clients",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("client_id", String(64), nullable=False, unique=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("auth_method", String(32), nullable=False),
    Column("scopes", Text, nullable=False),
    Column("jwks", Text, nullable=False, default=""),
    Column("secret_hash", String(160), nullable=False, default=""),
    Column("created_at", UTCDateTime(), nullable=False),
)

auth_used_jtis = Table(
    "auth_used_jtis",
    metadata,
    Column("client_id", String(64), nullable=False),
    Column("jti", String(255), nullable=False),
    Column("expires_at", UTCDateTime(), nullable=False),
    PrimaryKeyConstraint("client_id", "jti"),
    Index(None, "expires_at"),
)
