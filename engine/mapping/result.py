"""What applying a mapping returns: the outputs and why each value is what it is."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

__all__ = ["MappingResult", "Provenance", "RawProvenance"]

#: (target, source, rule, value, output) as the evaluator records it, per field per message.
RawProvenance = tuple[str, str, str, Any, int]


class Provenance(NamedTuple):
    """One target field: the source that gave its value and the rule that shaped it.

    ``source`` is the path that produced the value ("const", "default", a
    path, or "<path> via table <name>"); ``rule`` describes the whole rule as
    written in the mapping file. ``output`` is the index of the output
    (record) in :attr:`MappingResult.records`.
    """

    target: str
    source: str
    rule: str
    value: Any
    output: int = -1


@dataclass(frozen=True, slots=True)
class MappingResult:
    """The records (or DICOM/FHIR/HL7 descriptions) one input produced, with provenance.

    Provenance is recorded as plain tuples while mapping (it is built for every
    field of every message) and turned into :class:`Provenance` on access.
    """

    records: list[dict[str, Any]] = field(default_factory=list)
    raw_provenance: list[RawProvenance] = field(default_factory=list)

    @property
    def provenance(self) -> list[Provenance]:
        """Target field → source path, rule and value, in evaluation order."""
        return [Provenance._make(p) for p in self.raw_provenance]

    def provenance_of(self, output: int) -> list[Provenance]:
        """The provenance entries of output number ``output``."""
        return [p for p in self.provenance if p.output == output]
