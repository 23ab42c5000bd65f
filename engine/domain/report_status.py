"""OBR-25 result status through the site code table ``tables/report_status.csv``.

Reporting systems send HL7 table 0123 codes (P, F, C, X) and also their own
words ("Final", "Prelim", "Wet Read"); the table says what each means: the
HL7 code the engine works with (and sends on) and the FHIR DiagnosticReport
status. Codes are compared without case and surrounding spaces. A code that
is not listed is refused with AE 103 at ``OBR^n^25``, naming the table.

When OBR-25 is empty, the report's status is derived from its lines' OBX-11
(HL7 v2.5.1 table 0085, :func:`derive_status`) and read through the same table;
neither readable is AE 101 at ``OBR^n^25``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Literal

from engine.errors import ConfigError, ErrorLocation, HL7ApplicationError
from engine.mapping.tables import load_table

__all__ = ["DEFAULT_STATUS_TABLE", "OBSERVATION_STATUS", "STATUS_TABLE", "ReportStatus", "StatusTable",
           "derive_status", "load_status_table", "read_derived", "read_status"]

ResultStatus = Literal["P", "F", "C", "X"]
#: The shipped table's file name, as error texts name it.
STATUS_TABLE = "report_status.csv"
_RESULT = frozenset({"P", "F", "C", "X"})
_FHIR = frozenset({"registered", "partial", "preliminary", "final", "amended", "corrected", "appended",
                   "cancelled", "entered-in-error", "unknown"})


@dataclass(frozen=True, slots=True)
class ReportStatus:
    """What one OBR-25 code means."""

    result_status: str  # P, F, C or X
    fhir_status: str


@dataclass(frozen=True, slots=True)
class StatusTable:
    """Normalised code → meaning, and the file it came from (for error texts)."""

    rows: MappingProxyType[str, ReportStatus]
    name: str = STATUS_TABLE


#: HL7 table 0123 itself, used when the site has no table file.
#: Keys are normalised like every lookup (``_key``): with upper-case keys even "F" was refused.
DEFAULT_STATUS_TABLE = StatusTable(MappingProxyType({
    "p": ReportStatus("P", "preliminary"), "f": ReportStatus("F", "final"),
    "c": ReportStatus("C", "corrected"), "x": ReportStatus("X", "cancelled"),
}))  # fmt: skip


def _key(code: str) -> str:
    return " ".join(code.split()).casefold()


def load_status_table(path: Path | None) -> StatusTable:
    """Read ``code,result_status,fhir_status``; None or a missing file: HL7 table 0123.

    Raises ConfigError naming the file and the row for a result status other than
    P/F/C/X or a FHIR status outside the R4 value set.
    """
    if path is None or not path.exists():
        return DEFAULT_STATUS_TABLE
    table = load_table(path)
    missing = {"code", "result_status", "fhir_status"} - set(table.columns)
    if missing:
        raise ConfigError([f"{path}:1: need columns code, result_status, fhir_status (missing {sorted(missing)})"])
    result = table.index(1, "result_status")
    fhir = table.index(1, "fhir_status")
    rows: dict[str, ReportStatus] = {}
    problems = []
    for (code,), value in result.items():
        status = ReportStatus(value.strip().upper(), fhir[(code,)].strip())
        if status.result_status not in _RESULT or status.fhir_status not in _FHIR:
            problems.append(f"{path}: code {code!r}: result_status must be P, F, C or X and fhir_status a"
                            f" DiagnosticReport status (got {value!r}, {status.fhir_status!r})")
        rows.setdefault(_key(code), status)
    if problems:
        raise ConfigError(problems)
    return StatusTable(MappingProxyType(rows), path.name)


def read_status(table: StatusTable, code: str, sequence: int = 1) -> ReportStatus:
    """The meaning of OBR-25 ``code`` (the ``sequence``-th OBR); AE 103 at OBR^n^25 when unlisted."""
    found = table.rows.get(_key(code))
    if found is None:
        shown = repr(code) if code.strip() else "empty"
        raise HL7ApplicationError(103, f"OBR-25 result status {shown} is not in {table.name}",
                                  ErrorLocation("OBR", sequence, 25))
    return found


#: OBX-11 observation result status (HL7 v2.5.1 table 0085) -> the report's result status (table 0123).
#: D (delete), W (posted wrong), N (not asked) and O (order detail only) say nothing of the report's status
#: (a D or W OBX is not the report's content either: engine.domain.reports leaves it out).
OBSERVATION_STATUS: dict[str, str] = {
    "F": "F", "U": "F",  # final; U "changed to final without retransmitting the results"
    "C": "C",  # correction of a final result
    # v2.6+: A amended (after the placer's adjustments), v2.7+: B appended (further information, the result
    # unchanged): a change to a result already given, as C is (an addendum is sent as a correction)
    "A": "C", "B": "C",
    "P": "P", "R": "P", "S": "P", "I": "P",  # preliminary, entered not verified, partial, in process
    "X": "X",  # results cannot be obtained
}  # fmt: skip
#: Which status of the lines is the report's: any correction, else any preliminary, else final, else cancelled.
_PRECEDENCE = ("C", "P", "F", "X")


def derive_status(codes: Sequence[str]) -> str:
    """The report status the lines' OBX-11 ``codes`` give (P/F/C/X); "" when none is readable.

    All final is final, any correction (C, A amended, B appended) corrected, any preliminary (P, R, S, I)
    preliminary.
    """
    mapped = {OBSERVATION_STATUS.get(code.strip().upper(), "") for code in codes}
    return next((status for status in _PRECEDENCE if status in mapped), "")


def read_derived(table: StatusTable, codes: Sequence[str], sequence: int = 1) -> tuple[ReportStatus, str]:
    """The meaning of the status derived from OBX-11 ``codes`` (OBR-25 empty) and the note saying so.

    AE 101 at OBR^n^25 when no OBX-11 is readable; AE 103 when the site table lacks the derived code.
    """
    code = derive_status(codes)
    if not code:
        raise HL7ApplicationError(101, "OBR-25 result status empty and no OBX-11 status to derive it from (HL7 "
                                  "table 0085: F, C, A, B, P, R, S, I, U, X)", ErrorLocation("OBR", sequence, 25))
    found = table.rows.get(_key(code))
    if found is None:
        raise HL7ApplicationError(103, f"result status {code!r} (derived from OBX-11, OBR-25 empty) is not in "
                                  f"{table.name}", ErrorLocation("OBR", sequence, 25))
    shown = ", ".join(dict.fromkeys(c.strip().upper() for c in codes if c.strip()))
    return found, f"OBR-25 empty: status {code} derived from OBX-11 ({shown})"
