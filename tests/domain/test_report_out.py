"""ORU^R01 out: the bytes in the EHR's character set, and a control id stable per version."""

from __future__ import annotations

from engine.domain.report_out import control_id, encode_message

MSH = "MSH|^~\\&|RADBRIDGE|RAD|EHR|HOSP|20261205120000+0000||ORU^R01|RB1V1|P|{version}{charset}\rOBX|1|TX|GDT||{text}\r"


def message(text: str, charset: str = "", version: str = "2.5.1") -> str:
    return MSH.format(version=version, charset=f"||||||{charset}" if charset else "", text=text)


def test_the_message_is_encoded_in_the_charset_msh_18_names():
    assert encode_message(message("Café", "8859/1")).endswith("Caf\xe9\r".encode("latin-1"))
    assert "Café".encode() in encode_message(message("Café", "UNICODE UTF-8"))


def test_without_msh_18_the_message_is_ascii_and_what_ascii_cannot_hold_is_a_question_mark():
    assert encode_message(message("Café", version="2.3.1")).endswith(b"Caf?\r")


def test_a_resend_of_one_version_keeps_its_control_id():
    assert control_id(17, 2) == control_id(17, 2) == "RB17V2" != control_id(17, 3)
    assert len(control_id(10**12, 999)) <= 20
