"""FHIR push destination: upserts stored resources on a remote FHIR R4 server (conditional update).

:mod:`.rules` says by which identifier each type is upserted, :mod:`.references`
rewrites local references for the remote server, :mod:`.auth` supplies the
Authorization header (none, static bearer, OAuth 2.0 client credentials) and
:mod:`.destination` makes one delivery attempt for an outbox row. Queueing is in
:mod:`engine.fhir.push` (rows are added by the projector).
"""
