"""PS3.4 Table F.7.2-1 as data: N-CREATE completeness and what an N-SET may change."""

from __future__ import annotations

from pydicom.dataset import Dataset

from engine.domain.mpps_iod import MISSING_ATTRIBUTE, MISSING_VALUE, NO_SUCH_ATTRIBUTE, n_create_problem, n_set_problem
from tests.dicom.mpps_datasets import n_create_dataset, n_set_dataset, performed_series


def test_a_complete_n_create_and_n_set_pass() -> None:
    assert n_create_problem(n_create_dataset(), strict_type2=True) is None
    assert n_set_problem(n_set_dataset("COMPLETED"), strict_type2=True) is None


def test_absent_type_1_attributes_are_named_in_table_order() -> None:
    ds = Dataset()
    ds.PerformedProcedureStepStatus = "IN PROGRESS"
    problem = n_create_problem(ds)
    assert problem is not None and problem.status == MISSING_ATTRIBUTE
    assert problem.keywords == (
        "ScheduledStepAttributesSequence", "PerformedProcedureStepID", "PerformedStationAETitle",
        "PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime", "Modality",
    )  # fmt: skip
    assert len(problem.comment) <= 64 and problem.comment.startswith("missing: ScheduledStepAttributesSequence")


def test_an_empty_scheduled_step_sequence_is_a_missing_value() -> None:
    ds = n_create_dataset()
    ds.ScheduledStepAttributesSequence = []
    problem = n_create_problem(ds)
    assert problem is not None and (problem.status, problem.keywords) == (
        MISSING_VALUE, ("ScheduledStepAttributesSequence",)
    )


def test_type_2_absent_only_counts_when_required() -> None:
    ds = n_create_dataset()
    del ds.PatientBirthDate
    assert n_create_problem(ds) is None
    problem = n_create_problem(ds, strict_type2=True)
    assert problem is not None and problem.keywords == ("PatientBirthDate",)


def test_n_set_refuses_not_allowed_attributes_with_their_tags() -> None:
    ds = n_set_dataset("COMPLETED")
    ds.PatientID, ds.PerformedStationAETitle = "P2", "CT9"
    problem = n_set_problem(ds)
    assert problem is not None and problem.status == NO_SUCH_ATTRIBUTE
    assert problem.tags == (0x00100020, 0x00400241)


def test_n_set_checks_items_of_the_sequences_it_may_set() -> None:
    series = performed_series()
    series.ReferencedImageSequence[0].ReferencedSOPInstanceUID = ""
    problem = n_set_problem(n_set_dataset("COMPLETED", series))
    assert problem is not None and (problem.status, problem.keywords) == (MISSING_VALUE, ("ReferencedSOPInstanceUID",))


def test_attributes_the_table_does_not_name_are_type_3() -> None:
    ds = n_set_dataset("DISCONTINUED")
    ds.CommentsOnThePerformedProcedureStep = "patient moved"
    ds.add_new(0x00091010, "LO", "private")
    assert n_set_problem(ds) is None
