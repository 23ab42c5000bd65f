"""Is an order for imaging? Positive identification both ways, and "unknown" in between.

An order is **imaging** when its modality (IPC-5, or the mapping's procedure-code or
OBR-24 lookup) or its OBR-24 diagnostic service section is a DICOM modality of
``orders.imaging_modalities``. It is **non-imaging** only when the site said so:
its OBR-24 value (HL7 table 0074), its procedure code (OBR-4.1) or the kind of its
order detail segment (RXO pharmacy, ODS diet, RQD supply) is listed in the
non-imaging code table (``mappings/tables/non_imaging.csv`` by default). Anything
else is **unknown**: the orders handler answers AE 103 rather than guess, because
an imaging order silently classed non-imaging never reaches the worklist.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from engine.domain.records import OrderRecord
from engine.errors import ConfigError
from engine.mapping.tables import load_table

__all__ = [
    "DEFAULT_NON_IMAGING_SECTIONS",
    "DEFAULT_NON_IMAGING_SEGMENTS",
    "NON_IMAGING_TABLE",
    "Kind",
    "NonImaging",
    "classify",
    "describe",
    "listed_as",
    "load_non_imaging",
]

Kind = Literal["imaging", "non_imaging", "unknown"]

#: The shipped table's file name, as messages and docs name it.
NON_IMAGING_TABLE = "non_imaging.csv"

#: HL7 table 0074 diagnostic service sections that are never imaging. CT, PT, OT and the
#: ultrasound/nuclear sections are left out on purpose: they are (or collide with) DICOM modalities.
DEFAULT_NON_IMAGING_SECTIONS = frozenset({
    "AU", "BG", "BLB", "CH", "CP", "EC", "EN", "HM", "ICU", "IMM", "LAB", "MB", "MCB", "MYC",
    "NRS", "OSL", "PAT", "PF", "PHR", "PHY", "RC", "SP", "SR", "TX", "VR",
})  # fmt: skip

#: Order detail segments that are never imaging (HL7 v2.5.1 4.8 pharmacy, 4.6 diet, 4.12 supply).
DEFAULT_NON_IMAGING_SEGMENTS = frozenset({"RXO", "ODS", "ODT", "RQD", "RQ1"})

#: The table's ``field`` column: which order field a row's code is compared with.
_FIELDS = {"OBR-24": "sections", "OBR-4": "procedure_codes", "SEGMENT": "segments"}


@dataclass(frozen=True, slots=True)
class NonImaging:
    """Codes the site marks as non-imaging, and the table they came from."""

    sections: frozenset[str] = DEFAULT_NON_IMAGING_SECTIONS
    procedure_codes: frozenset[str] = frozenset()
    segments: frozenset[str] = DEFAULT_NON_IMAGING_SEGMENTS
    table: str = NON_IMAGING_TABLE


def load_non_imaging(path: Path | None) -> NonImaging:
    """Read the ``field,code[,description]`` table; None or a missing file: the shipped default.

    ``field`` is ``OBR-24`` (diagnostic service section), ``OBR-4`` (universal service
    id, the procedure code) or ``segment`` (the group's order detail segment, e.g. RXO);
    any other value is a ConfigError naming the line.
    """
    if path is None or not path.exists():
        return NonImaging()
    table = load_table(path)
    if table.columns[:2] != ("field", "code"):
        raise ConfigError([f"{path}:1: need columns field, code (and optionally description)"])
    found: dict[str, set[str]] = {"sections": set(), "procedure_codes": set(), "segments": set()}
    problems = []
    for line, row in enumerate(table.rows, start=2):
        kind = _FIELDS.get(row[0].upper())
        if kind is None:
            problems.append(f"{path}:{line}: field {row[0]!r} is not one of OBR-24, OBR-4, segment")
        elif row[1]:
            found[kind].add(row[1] if kind == "procedure_codes" else row[1].upper())
    if problems:
        raise ConfigError(problems)
    return NonImaging(
        frozenset(found["sections"]), frozenset(found["procedure_codes"]), frozenset(found["segments"]), path.name
    )


def _code(record: OrderRecord) -> str:
    code = record.requested_procedure_code
    return (code.code_value if code else "") or record.universal_service_id


def classify(record: OrderRecord, modalities: frozenset[str], non_imaging: NonImaging) -> Kind:
    """Imaging, non-imaging (positively listed) or unknown; an empty ``modalities``: all imaging."""
    if not modalities:
        return "imaging"
    section = record.diagnostic_service_section.strip().upper()
    if {record.modality.upper(), section} & modalities:
        return "imaging"
    if (section and section in non_imaging.sections) or record.modality.upper() in non_imaging.sections:
        return "non_imaging"
    if _code(record) and _code(record) in non_imaging.procedure_codes:
        return "non_imaging"
    if record.order_detail_segment.upper() in non_imaging.segments:
        return "non_imaging"
    return "unknown"


def listed_as(record: OrderRecord, non_imaging: NonImaging) -> str:
    """Which listed value made a non-imaging order so: ``OBR-24 'LAB'``, ``OBR-4 'GLU'``, ``segment RXO``."""
    section = record.diagnostic_service_section.strip().upper() or record.modality.upper()
    if section in non_imaging.sections:
        return f"OBR-24 {section!r}"
    if _code(record) in non_imaging.procedure_codes:
        return f"OBR-4 {_code(record)!r}"
    return f"segment {record.order_detail_segment.upper()}"


def describe(record: OrderRecord, non_imaging: NonImaging) -> str:
    """Why an order's modality is unknown, naming the values and tables to edit."""
    section = record.diagnostic_service_section or record.modality
    code = record.requested_procedure_code
    scheme = f" ({code.coding_scheme_designator})" if code and code.coding_scheme_designator else ""
    where = (f"OBR-24 {section!r} is not a modality (orders.imaging_modalities, modality_aliases.csv)"
             if section else "OBR-24 empty")
    return (f"cannot tell the modality: {where}, procedure code {_code(record)!r}{scheme} is not in "
            f"procedure_codes.csv (imaging) nor in {non_imaging.table} (non-imaging)")
