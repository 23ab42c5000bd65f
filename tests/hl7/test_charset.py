from engine.hl7.charset import declared_charset, decode

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
