"""What applying a mapping returns: the outputs and why each value is what it is."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["MappingResult", "Provenance"]


@dataclass(frozen=True, slots=True)
class Provenance:
    """One target field: the source that gave its value and the rule that shaped it.

    ``source`` is the path that produced the value ("const", "default", a
    path, or "<path> via table <name>"); ``rule`` describes the whole rule as
    written in the mapping file. ``output`` is the index of the output
    (record) in :attr:`MappingResult.records`; -1 while it is being built.
    """

    target: str
    source: str
    rule: str
    value: Any
    output: int = -1


@dataclass(frozen=True, slots=True)
class MappingResult:
    """The records (or DICOM/FHIR/HL7 descriptions) one input produced, with provenance."""

    records: list[dict[str, Any]] = field(default_factory=list)
    provenance: list[Provenance] = field(default_factory=list)

    def provenance_of(self, output: int) -> list[Provenance]:
        """The provenance entries of output number ``output``."""
        return [p for p in self.provenance if p.output == output]
