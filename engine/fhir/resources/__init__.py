"""One module per FHIR resource type; each builds its resources from the domain tables in bulk."""
