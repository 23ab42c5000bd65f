"""radbridge: an HL7 v2 / FHIR integration engine for radiology."""

__version__ = "0.1.0"
