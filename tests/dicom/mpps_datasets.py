"""MPPS request datasets as a conformant modality sends them (PS3.4 Table F.7.2-1)."""

from __future__ import annotations

from pydicom.dataset import Dataset

MPPS = "1.2.840.10008.3.1.2.3.3"


def scheduled_step(study_uid: str = "1.2.3.1", accession: str = "ACC1", sps_id: str = "SPS1") -> Dataset:
    """One Scheduled Step Attributes Sequence item: Type 1 and Type 2 attributes."""
    item = Dataset()
    item.StudyInstanceUID = study_uid
    item.ReferencedStudySequence = []
    item.AccessionNumber = accession
    item.RequestedProcedureID = "RP1"
    item.RequestedProcedureDescription = ""
    item.ScheduledProcedureStepID = sps_id
    item.ScheduledProcedureStepDescription = ""
    item.ScheduledProtocolCodeSequence = []
    return item


def n_create_dataset(status: str = "IN PROGRESS", patient_id: str = "P1", *steps: Dataset) -> Dataset:
    """An N-CREATE attribute list with every Type 1 and Type 2 attribute of Table F.7.2-1."""
    ds = Dataset()
    ds.ScheduledStepAttributesSequence = list(steps) or [scheduled_step()]
    ds.PatientName = "DOE^JANE"
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "F"
    ds.ReferencedPatientSequence = []
    ds.PerformedProcedureStepID = "PPS1"
    ds.PerformedStationAETitle = "CT1"
    ds.PerformedStationName = ""
    ds.PerformedLocation = ""
    ds.PerformedProcedureStepStartDate = "20261122"
    ds.PerformedProcedureStepStartTime = "093000"
    ds.PerformedProcedureStepStatus = status
    ds.PerformedProcedureStepDescription = ""
    ds.PerformedProcedureTypeDescription = ""
    ds.ProcedureCodeSequence = []
    ds.PerformedProcedureStepEndDate = ""
    ds.PerformedProcedureStepEndTime = ""
    ds.Modality = "CT"
    ds.StudyID = ""
    ds.PerformedProtocolCodeSequence = []
    ds.PerformedSeriesSequence = []
    return ds


def performed_series(series_uid: str = "1.2.3.1.1", *image_uids: str) -> Dataset:
    """One Performed Series Sequence item (Type 1 and 2 of its N-SET subset)."""
    series = Dataset()
    series.PerformingPhysicianName = ""
    series.ProtocolName = "HEAD"
    series.OperatorsName = ""
    series.SeriesInstanceUID = series_uid
    series.SeriesDescription = ""
    series.RetrieveAETitle = ""
    refs = []
    for uid in image_uids or ("1.2.3.1.1.1",):
        ref = Dataset()
        ref.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        ref.ReferencedSOPInstanceUID = uid
        refs.append(ref)
    series.ReferencedImageSequence = refs
    series.ReferencedNonImageCompositeSOPInstanceSequence = []
    return series


def n_set_dataset(status: str, *series: Dataset) -> Dataset:
    """An N-SET modification list: the status, end date/time and the performed series."""
    ds = Dataset()
    ds.PerformedProcedureStepStatus = status
    ds.PerformedProcedureStepEndDate = "20261122"
    ds.PerformedProcedureStepEndTime = "094500"
    ds.PerformedSeriesSequence = list(series) or [performed_series()]
    return ds
