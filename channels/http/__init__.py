"""HTTP connectors: the POST destination (and later the FHIR facade)."""
