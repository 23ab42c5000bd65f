"""Values from HL7 longer than DICOM holds: what the orders and patients handlers do with them.

One rule on every database (a column's length is enforced by PostgreSQL and ignored by SQLite,
so the engine checks first, never the database):

* identifiers (patient id, issuer, placer/filler numbers, accession number, Study Instance UID,
  admission id), codes, a modality, names (PN) longer than their column: AE 102 at their field
  (engine.records' ``max_length`` limits, ERR location from engine.domain.handlers);
* descriptions and code meanings: cut to 64 (LO) where stored (engine.domain.orders); visit
  locations and patient class: cut to their columns (engine.domain.visits);
* the step's own identifiers, which DICOM gives 16 characters (SH, AE) but real orders overrun
  (the dcm4che OMI^O23 sample's IPC-4 has 19): Requested Procedure ID, Scheduled Procedure Step
  ID, Scheduled Station Name, Scheduled Procedure Step Location and each Scheduled Station AE
  Title are **kept whole** up to 64 characters (LO), because the modality echoes them in MPPS
  and images and they must match the step again; a cut one would not. The worklist returns them
  whole. The message's note says which ones overran DICOM's 16 (:func:`over_dicom`).
"""

from __future__ import annotations

from engine.domain.records import LO, SH, OrderRecord
from engine.errors import ErrorLocation, HL7ApplicationError

__all__ = ["KEPT_WHOLE", "over_dicom"]

#: Order record field -> (DICOM attribute, where the shipped mapping reads it): SH in DICOM, kept
#: whole up to LO. The station AE titles (IPC-9) are checked one by one in :func:`over_dicom`.
KEPT_WHOLE: dict[str, tuple[str, str]] = {
    "requested_procedure_id": ("Requested Procedure ID", "IPC-2/OBR-19"),
    "scheduled_procedure_step_id": ("Scheduled Procedure Step ID", "IPC-4/OBR-20"),
    "scheduled_station_name": ("Scheduled Station Name", "IPC-7"),
    "scheduled_procedure_step_location": ("Scheduled Procedure Step Location", "IPC-8"),
}


def over_dicom(record: OrderRecord, sequence: int = 1) -> list[str]:
    """Notes for the step identifiers of ``record`` longer than DICOM's 16, kept whole.

    A Scheduled Station AE Title over LO is AE 102 at ``IPC^n^9`` (the other fields' limits are
    the record's own); one over 16 is kept, but no modality can ask for it (an AE title is at
    most 16 characters on the wire), which the note says.
    """
    notes = [
        f"{attribute} ({source}) is {len(value)} characters, longer than a DICOM SH ({SH}): kept whole"
        for name, (attribute, source) in KEPT_WHOLE.items()
        if len(value := getattr(record, name)) > SH
    ]
    for ae in record.scheduled_station_ae_title.split("\\"):
        if len(ae) > LO:
            raise HL7ApplicationError(
                102, f"scheduled_station_ae_title (IPC-9) has a value of {len(ae)} characters; radbridge keeps "
                f"at most {LO} (a DICOM AE title holds {SH})", ErrorLocation("IPC", sequence, 9))
        if len(ae) > SH:
            notes.append(f"a Scheduled Station AE Title (IPC-9) is {len(ae)} characters, longer than a DICOM AE "
                         f"({SH}): kept whole, but no modality can ask for it by its AE title")
    return notes
