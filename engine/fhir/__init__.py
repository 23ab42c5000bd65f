"""The FHIR R4 facade's data side: resources built from the domain tables, stored and indexed.

The HTTP side is :mod:`channels.fhir`. Flow: a domain change fires a trigger
(:mod:`engine.fhir.triggers`) that records a pending row; the projector
(:mod:`engine.fhir.projector`) builds the resources it names (one module per
resource type in :mod:`engine.fhir.resources`, listed in :mod:`engine.fhir.registry`),
stores their JSON and search-index rows; the API serves the stored JSON and runs
searches in SQL over the index (:mod:`engine.fhir.search`).
"""
