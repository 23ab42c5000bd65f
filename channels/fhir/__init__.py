"""The FHIR R4 REST facade (HTTP source connector): read, vread, history, search, metadata.

Served by uvicorn inside the engine process (:mod:`channels.fhir.server`); the
application (:mod:`channels.fhir.app`) is a starlette app over the stored resources
of :mod:`engine.fhir`. Every PHI request passes :mod:`channels.fhir.access`
(authenticate, require scope, audit) before any data is read.
"""
