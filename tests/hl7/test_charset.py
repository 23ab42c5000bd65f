from engine.hl7.charset import charset_note, declared_charset, decode

LATIN1_NAME = "MSH|^~\\&|A|B|C|D|20260101||ADT^A08|1|P|2.5||||||{cs}\rPID|||1||M\u00dcLLER^J\u00d6RG\r"


def msg(cs: str, encoding: str) -> bytes:
    return LATIN1_NAME.format(cs=cs).encode(encoding)


def test_declared_charset_is_read_from_msh_18():
    assert declared_charset(msg("8859/1", "latin-1")) == "8859/1"
    assert declared_charset(b"MSH|^~\\&|A\rPID|x") == ""


def test_latin1_declared_and_sent():
    d = decode(msg("8859/1", "latin-1"))
    assert "M\u00dcLLER" in d.text and d.charset == "latin-1" and not d.fallback_used


def test_utf8_declared_and_sent():
    d = decode(msg("UNICODE UTF-8", "utf-8"))
    assert "M\u00dcLLER" in d.text and d.charset == "utf-8"


def test_latin1_declared_but_utf8_sent_is_read_as_utf8():
    d = decode(msg("8859/1", "utf-8"))
    assert "M\u00dcLLER" in d.text and d.charset == "utf-8"


def test_utf8_declared_but_latin1_sent_falls_back():
    d = decode(msg("UNICODE UTF-8", "latin-1"), fallback="8859/1")
    assert "M\u00dcLLER" in d.text and d.fallback_used


def test_nothing_declared_latin1_sent_uses_fallback():
    d = decode(msg("", "latin-1"), fallback="8859/1")
    assert "M\u00dcLLER" in d.text


def test_utf8_bom_is_dropped():
    d = decode(b"\xef\xbb\xbf" + msg("", "utf-8"))
    assert d.text.startswith("MSH")


def test_undecodable_bytes_never_raise():
    d = decode(b"MSH|^~\\&|" + bytes(range(256)), fallback="ascii", detect_utf8=False)
    assert d.text.startswith("MSH")


def test_a_message_read_as_declared_has_no_charset_note():
    assert charset_note(decode(msg("8859/1", "latin-1"))) == ""
    assert charset_note(decode(msg("UNICODE UTF-8", "utf-8"))) == ""
    assert charset_note(decode(b"MSH|^~\\&|A|B|C|D|20260101||ADT^A08|1|P|2.5\rPID|||1||DOE\r")) == ""


def test_the_note_says_utf8_declared_but_latin1_read_by_the_fallback():
    note = charset_note(decode(msg("UNICODE UTF-8", "latin-1"), fallback="8859/1"))
    assert note == "MSH-18 'UNICODE UTF-8' does not decode these bytes: read as latin-1 (source.charset_fallback)"


def test_the_note_says_single_byte_declared_but_utf8_detected():
    note = charset_note(decode(msg("8859/1", "utf-8")))
    assert note == "MSH-18 '8859/1', but the bytes are UTF-8: read as UTF-8 (source.detect_utf8)"


def test_the_note_says_an_unknown_charset_name_was_read_by_the_fallback():
    note = charset_note(decode(msg("KLINGON-1", "latin-1"), fallback="8859/1"))
    assert note == ("MSH-18 'KLINGON-1' is not a character set radbridge knows: read as latin-1"
                    " (source.charset_fallback)")


def test_the_note_says_undecodable_bytes_were_replaced():
    raw = msg("UNICODE UTF-8", "latin-1") + b"\xff"
    note = charset_note(decode(raw, fallback="UNICODE UTF-8", detect_utf8=False))
    assert note.startswith("MSH-18 'UNICODE UTF-8': bytes that utf-8 cannot decode were replaced")


def test_an_msh_18_naming_a_codec_that_is_not_a_character_set_is_not_used():
    """'hex', 'base64', 'zlib', 'rot13' pass codecs.lookup but are no text encodings: str.decode raised
    LookupError and the MLLP connection was dropped without an ACK (the sender resent it for ever)."""
    from engine.hl7.charset import codec_for

    for name in ("hex", "base64", "zlib", "rot13", "bz2"):
        assert codec_for(name) is None, name
        d = decode(msg(name, "latin-1"), fallback="8859/1")
        assert "M\u00dcLLER" in d.text and d.fallback_used, name
    assert codec_for("CP1250") == "cp1250"
