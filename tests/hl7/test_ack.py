from datetime import UTC, datetime

from engine.errors import ErrorLocation, HL7ApplicationError
from engine.hl7.ack import AckContext, build_ack
from engine.hl7.er7 import Message

MSG = "MSH|^~\\&|RIS|HOSP|RB|RAD|20261122083000||ORM^O01^ORM_O01|C123|P|2.5.1||||||8859/1\rPID|1||X\r"
CTX = AckContext("ACK1", datetime(2026, 11, 22, 8, 0, tzinfo=UTC), "RADBRIDGE", "RADIOLOGY")


def segments(text):
    return [s.split("|") for s in text.strip("\r").split("\r")]


def test_aa_swaps_sender_and_receiver_and_echoes_control_id():
    msh, msa = segments(build_ack(Message(MSG), "AA", CTX))
    assert msh[2:6] == ["RB", "RAD", "RIS", "HOSP"]
    assert msh[8] == "ACK^O01^ACK" and msh[9] == "ACK1" and msh[10] == "P" and msh[11] == "2.5.1"
    assert msh[17] == "8859/1"
    assert msa == ["MSA", "AA", "C123"]


def test_padded_processing_id_and_version_are_echoed_without_their_spaces():
    msg = MSG.replace("|P|2.5.1|", "|P |2.3 |")
    err = HL7ApplicationError(101, "missing", ErrorLocation("PID", 1, 3))
    msh, _, err_seg = segments(build_ack(Message(msg), "AE", CTX, err))
    assert msh[10:12] == ["P", "2.3"]
    assert err_seg[1] == "PID^1^3^101&Required field missing&HL70357"  # read as 2.3: ERR-1 as well


def test_error_ack_has_err_with_location_code_and_severity():
    err = HL7ApplicationError(102, "PID-7 is not a valid TS", ErrorLocation("PID", 1, 7, 1))
    _, msa, err_seg = segments(build_ack(Message(MSG), "AE", CTX, err))
    assert msa[:3] == ["MSA", "AE", "C123"]
    assert err_seg[2] == "PID^1^7^1"
    assert err_seg[3] == "102^Data type error^HL70357"
    assert err_seg[4] == "E"


def test_pre_25_versions_also_get_erR_1():
    msg = MSG.replace("2.5.1", "2.3")
    err = HL7ApplicationError(101, "missing", ErrorLocation("PID", 1, 3))
    err_seg = segments(build_ack(Message(msg), "AE", CTX, err))[2]
    assert err_seg[1] == "PID^1^3^101&Required field missing&HL70357"


def test_ack_uses_the_message_encoding_characters():
    msg = MSG.replace("^~\\&", "^~\\}")
    err = HL7ApplicationError(101, "a&b", ErrorLocation("PID", 1, 3))
    text = build_ack(Message(msg), "AE", CTX, err)
    assert text.startswith("MSH|^~\\}|")


def test_unparseable_input_gets_an_ack_from_our_identity():
    msh, msa = segments(build_ack(None, "AR", CTX))[:2]
    assert msh[2:4] == ["RADBRIDGE", "RADIOLOGY"] and msa[:2] == ["MSA", "AR"]


def test_timestamp_keeps_the_offset_of_each_zone_for_the_same_instant():
    from datetime import timedelta, timezone

    from engine.hl7.ack import timestamp

    instant = datetime(2026, 11, 22, 8, 0, 5, tzinfo=UTC)
    assert timestamp(instant) == "20261122080005+0000"
    assert timestamp(instant.astimezone(timezone(timedelta(hours=1)))) == "20261122090005+0100"


def test_the_engine_writes_no_non_ascii_text_of_its_own_outside_these_known_places():
    """An ACK's text goes out in the message's MSH-18, 8859/1 when it has none: a character of the
    engine's own outside ASCII ('→' in a rule's description) arrived as '?'. The only non-ASCII
    string constants in engine/ and channels/ (docstrings aside) are these, none of which reach an ACK."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    found = set()
    for path in sorted([*(root / "engine").rglob("*.py"), *(root / "channels").rglob("*.py")]):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                      if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                      and node.body and isinstance(node.body[0], ast.Expr)}
        found |= {(path.relative_to(root).as_posix(), node.value) for node in ast.walk(tree)
                  if isinstance(node, ast.Constant) and isinstance(node.value, str) and not node.value.isascii()
                  and id(node) not in docstrings}
    assert found == {
        ("engine/channel/persist.py", "\ufffd"),  # a NUL stored as U+FFFD (PostgreSQL text), never sent
        ("engine/config/loader.py", " \u2026"),  # configuration errors, printed by the CLI
        ("engine/mapping/checks.py", " \u2026"),
        ("engine/hl7/batch.py", "\ufeff"),  # a byte order mark read, not written
        ("engine/hl7/er7.py", "\ufeff"),
    }
