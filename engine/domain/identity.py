"""Which identifier a message's PID-3 (or MRG-1) names the patient by: one rule for every record.

A mapping proposes an identity (``patient_id`` + ``issuer``, by default the first
repetition) and the other repetitions (``other_ids``). ``patients.trusted_issuers``
then picks, of the proposed id and the others in that order, the first whose issuer
is listed; the rest stay other ids (OtherPatientIDsSequence). With no trusted
issuers, or none listed among the repetitions, the mapping's choice stands.

Patient records (ADT and an order's PID), order records and merge records (A40 / A47,
survivor and prior alike) all go through :func:`choose_identity`, so the same PID-3
always lands on the same patient whatever record carries it.
"""

from __future__ import annotations

from collections.abc import Sequence

from engine.domain.records import MergeRecord, OrderRecord, OtherPatientId, PatientRecord

__all__ = ["choose_identity", "resolve_identity", "resolved_merge", "resolved_order"]


def choose_identity(
    proposed: OtherPatientId, others: Sequence[OtherPatientId], trusted: Sequence[str]
) -> tuple[OtherPatientId, list[OtherPatientId]]:
    """(identity, other ids): the first of ``proposed, *others`` from a trusted issuer, else ``proposed``.

    Idempotent: the chosen id comes first in the answer, so choosing again gives it back.
    """
    if not others or not trusted:  # the common case: nothing to choose from, or no rule
        return proposed, list(others)
    candidates = [proposed, *others]
    chosen = next((c for c in candidates if c.issuer in trusted), proposed)
    return chosen, [c for c in candidates if c is not chosen]


def resolve_identity(
    record: PatientRecord | OrderRecord, trusted: Sequence[str]
) -> tuple[str, str, list[OtherPatientId]]:
    """(patient_id, issuer, other ids) of a patient or order record under ``trusted``."""
    if not record.other_ids or not trusted:  # nothing to choose (choose_identity's answer), no model built
        return record.patient_id, record.issuer, list(record.other_ids)
    proposed = OtherPatientId(patient_id=record.patient_id, issuer=record.issuer)
    chosen, others = choose_identity(proposed, record.other_ids, trusted)
    return chosen.patient_id, chosen.issuer, others


def resolved_order(record: OrderRecord, trusted: Sequence[str]) -> OrderRecord:
    """The order record naming its patient by the chosen identity (the same object if unchanged)."""
    patient_id, issuer, others = resolve_identity(record, trusted)
    if (patient_id, issuer) == (record.patient_id, record.issuer):
        return record
    return record.model_copy(update={"patient_id": patient_id, "issuer": issuer, "other_ids": others})


def resolved_merge(record: MergeRecord, trusted: Sequence[str]) -> MergeRecord:
    """The merge record with its survivor (PID-3) and prior (MRG-1) each chosen by the rule."""
    survivor, others = choose_identity(
        OtherPatientId(patient_id=record.patient_id, issuer=record.issuer), record.other_ids, trusted
    )
    prior, prior_others = choose_identity(
        OtherPatientId(patient_id=record.prior_patient_id, issuer=record.prior_issuer),
        record.prior_other_ids, trusted,
    )  # fmt: skip
    return record.model_copy(update={
        "patient_id": survivor.patient_id, "issuer": survivor.issuer, "other_ids": others,
        "prior_patient_id": prior.patient_id, "prior_issuer": prior.issuer, "prior_other_ids": prior_others,
    })  # fmt: skip
