"""DICOM services: Modality Worklist (C-FIND) and MPPS (N-CREATE/N-SET) on one AE."""
