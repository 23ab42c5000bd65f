"""The DICOM listener's log filters on records as pynetdicom and pydicom write them."""

from __future__ import annotations

import logging
import sys

from channels.dicom.log_filters import PeerGoneFilter, ValueRedactFilter


def _record(name: str, level: int, msg: str, func: str = "", exc: BaseException | None = None) -> logging.LogRecord:
    exc_info = (type(exc), exc, None) if exc is not None else None
    record = logging.LogRecord(name, level, "x.py", 1, msg, (), exc_info, func)
    return record


def test_a_reset_while_reading_is_one_info_line_without_traceback() -> None:
    flt = PeerGoneFilter()
    line = _record("pynetdicom.dul", logging.ERROR, "Connection closed before the entire PDU was received",
                   "_read_pdu_data")  # fmt: skip
    trace = _record("pynetdicom.dul", logging.ERROR, "[Errno 104] Connection reset by peer", "_read_pdu_data",
                    ConnectionResetError(104, "Connection reset by peer"))  # fmt: skip
    assert flt.filter(line) and (line.levelno, line.getMessage()) == (
        logging.INFO, "DICOM connection reset or timed out while reading a PDU"
    )
    assert not flt.filter(trace)


def test_other_dul_errors_pass_unchanged() -> None:
    record = _record("pynetdicom.dul", logging.ERROR, "Unknown PDU type received '0x09'", "_read_pdu_data")
    try:
        raise ValueError("bad PDU")
    except ValueError:
        decode_error = _record("pynetdicom.dul", logging.ERROR, "bad PDU", "_read_pdu_data")
        decode_error.exc_info = sys.exc_info()
    assert PeerGoneFilter().filter(record) and record.levelno == logging.ERROR
    assert PeerGoneFilter().filter(decode_error)


def test_pydicom_value_warnings_keep_their_vr_and_lose_their_value() -> None:
    flt = ValueRedactFilter()
    da = _record("pydicom", logging.WARNING, "Invalid value for VR DA: '19700101-garbage'.")
    ds = _record("pydicom", logging.WARNING, 'Value "12a" is not valid for elements with a VR of DS')
    other = _record("pydicom", logging.WARNING, "VR lookup failed for the raw element with tag (0009,1010)")
    assert all(flt.filter(r) for r in (da, ds, other))
    assert da.getMessage() == "Invalid value for VR DA: <value withheld>."
    assert ds.getMessage() == "Value <value withheld> is not valid for elements with a VR of DS"
    assert other.getMessage() == "VR lookup failed for the raw element with tag (0009,1010)"
