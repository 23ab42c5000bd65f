"""The spliced header of a coerced image against pydicom's whole-header encoding (the path it replaces).

:func:`~engine.reconcile.rewrite.encode_coerced` re-encodes only the elements a coercion changed and copies
every other element as received. Over every corpus file (each transfer syntax the corpus has) and over
generated headers (random elements, sequences of defined and undefined length, private blocks, group
lengths, earlier OriginalAttributesSequence items, three encodings), the spliced header must be
byte-identical to :func:`~engine.reconcile.rewrite.encode_header` of the same coerced dataset, except in
elements nobody changed that pydicom itself would not write back as received; those keep their received
bytes. After a character set change every text element (and sequence) is re-encoded too, and every
other element still keeps its received bytes.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from pydicom.uid import UID, generate_uid

from engine.archive.part10 import dataset_offset, encode_file_meta
from engine.archive.structure import Encoding, check_structure, top_level_elements
from engine.errors import MalformedDataset
from engine.reconcile.coerce import Coercion, Modification, coerce_header
from engine.reconcile.rewrite import Header, encode_coerced, encode_header, encoding_of, read_header, reencoded_tags

NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
MOD = Modification(NOW, "RADBRIDGE", "CT1")
ENCODINGS = (Encoding(False, True), Encoding(True, True), Encoding(False, False))
_TS = {Encoding(False, True): "1.2.840.10008.1.2.1", Encoding(True, True): "1.2.840.10008.1.2",
       Encoding(False, False): "1.2.840.10008.1.2.2"}

#: What the shipped order-to-image mapping writes, with values an order would carry (ASCII: no charset change).
ORDER_TARGET: dict[str, Any] = {
    "PatientName": "DOE^JOHN", "PatientID": "583295", "IssuerOfPatientID": "HOSP", "PatientBirthDate": "19600101",
    "PatientSex": "M", "AccessionNumber": "ACC1",
    "IssuerOfAccessionNumberSequence": [{"LocalNamespaceEntityID": "RIS"}],
    "ReferringPhysicianName": "", "StudyDescription": "MR LEFT WRIST", "StudyID": "RP1",
    "ProcedureCodeSequence": [{"CodeValue": "MRWR", "CodingSchemeDesignator": "L", "CodeMeaning": "MR wrist"}],
    "RequestAttributesSequence": [{
        "RequestedProcedureID": "RP1", "ScheduledProcedureStepID": "SPS1", "AccessionNumber": "ACC1",
        "StudyInstanceUID": "1.2.3.4", "RequestedProcedureDescription": "MR LEFT WRIST",
        "RequestedProcedureCodeSequence": [{"CodeValue": "MRWR", "CodingSchemeDesignator": "L", "CodeMeaning": ""}],
        "ScheduledProtocolCodeSequence": [{"CodeValue": "", "CodingSchemeDesignator": "", "CodeMeaning": ""}]}],
}  # fmt: skip


def _elements(data: bytes, enc: Encoding) -> dict[int, bytes]:
    return {tag: data[start:stop] for tag, start, stop in top_level_elements(data, 0, len(data), enc)}


def _no_group_lengths(elements: dict[int, bytes]) -> dict[int, bytes]:
    return {tag: raw for tag, raw in elements.items() if not (tag & 0xFFFF == 0 and tag >> 16 > 6)}


def _header(raw: bytes, enc: Encoding) -> Header:
    return Header(read_dataset(BytesIO(raw), enc.implicit, enc.little), raw, len(raw), enc)


def assert_spliced_as_pydicom_encodes(raw: bytes, enc: Encoding, target: dict[str, Any]) -> Coercion:
    """Coerce two parses of ``raw``; the spliced one must match the whole re-encode of the other."""
    whole, spliced = _header(raw, enc), _header(raw, enc)
    coercion = coerce_header(whole.dataset, target, MOD)
    assert coerce_header(spliced.dataset, target, MOD) == coercion
    if not coercion.changed:
        return coercion  # nothing to write
    reference = encode_header(whole.dataset, enc)
    out = encode_coerced(spliced, coercion).head
    reencoded = reencoded_tags(spliced, coercion)
    # After a character set change pydicom's whole encoding decodes and re-encodes every element (normalising
    # " 107" to "107 "), so only the re-encoded elements can be compared with it.
    untouched_as_pydicom_writes = {} if coercion.charset_changed else _elements(
        encode_header(_header(raw, enc).dataset, enc), enc)
    received = _no_group_lengths(_elements(raw, enc))
    if untouched_as_pydicom_writes == received:
        assert out == reference  # pydicom writes every untouched element as received: byte for byte
    got, want = _elements(out, enc), _elements(reference, enc)
    assert list(got) == list(want)
    for tag, element in got.items():
        if tag in reencoded:
            assert element == want[tag], f"({tag >> 16:04X},{tag & 0xFFFF:04X}) re-encoded differently"
        else:
            assert element == received[tag], f"({tag >> 16:04X},{tag & 0xFFFF:04X}) not as received"
            if untouched_as_pydicom_writes.get(tag) == received[tag]:
                assert element == want[tag]
    return coercion


def _corpus_headers(corpus: Path) -> Iterator[tuple[str, bytes, Encoding]]:
    for path in sorted((corpus / "dicom").rglob("*.dcm")):
        data = path.read_bytes()
        try:
            offset = dataset_offset(data[:1 << 16])
            enc = encoding_of(str(dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID))
            if enc is None:
                continue  # deflated: read and written whole, never spliced
            check_structure(data, offset, len(data), enc)
            with path.open("rb") as f:
                header = read_header(f, offset, enc)
        except (MalformedDataset, ValueError, AttributeError, KeyError):
            continue  # refused on receipt (unparsable), never coerced
        yield path.name, header.raw, enc


def test_every_corpus_header_splices_as_pydicom_encodes(corpus: Path) -> None:
    syntaxes: set[tuple[bool, bool]] = set()
    spliced = 0
    for name, raw, enc in _corpus_headers(corpus):
        for target in (ORDER_TARGET, {"PatientName": "Buc^Jérôme", "StudyID": "7"}, {"PatientID": "X" * 64}):
            try:
                coercion = assert_spliced_as_pydicom_encodes(raw, enc, target)
            except AssertionError as exc:
                raise AssertionError(f"{name}: {exc}") from exc
            spliced += bool(coercion.changed and not coercion.charset_changed)
        syntaxes.add((enc.implicit, enc.little))
    assert syntaxes == {(False, True), (True, True), (False, False)}  # every splittable encoding was tried
    assert spliced > 60


def test_a_header_coerced_twice_keeps_the_first_item_and_appends_the_second() -> None:
    enc = Encoding(False, True)
    raw = _encode(_base(random.Random(1)), enc)
    first = _header(raw, enc)
    once = encode_coerced(first, coerce_header(first.dataset, {"PatientName": "ONE"}, MOD)).head
    second = _header(once, enc)
    later = Modification(NOW, "RADBRIDGE", "", "CORRECT")
    twice = encode_coerced(second, coerce_header(second.dataset, {"PatientName": "TWO"}, later)).head
    assert_spliced_as_pydicom_encodes(once, enc, {"PatientName": "TWO"})
    before, after = _header(once, enc).dataset, _header(twice, enc).dataset
    (item,) = before.OriginalAttributesSequence
    assert after.OriginalAttributesSequence[0] == item
    assert str(after.OriginalAttributesSequence[1].ModifiedAttributesSequence[0].PatientName) == "ONE"
    assert after.OriginalAttributesSequence[1].ReasonForTheAttributeModification == "CORRECT"
    assert str(after.PatientName) == "TWO"


def _explicit(*elements: tuple[int, str, bytes]) -> bytes:
    """Top-level elements (tag, VR, value) in explicit VR little endian, framed by hand: as received."""
    out = b""
    for tag, vr, value in elements:
        long = vr in ("SQ", "OB", "UN", "UT")
        length = len(value).to_bytes(4 if long else 2, "little")
        out += (tag >> 16).to_bytes(2, "little") + (tag & 0xFFFF).to_bytes(2, "little")
        out += vr.encode() + (b"\0\0" if long else b"") + length + value
    return out


def _item_bytes(body: bytes) -> bytes:
    return b"\xfe\xff\x00\xe0" + len(body).to_bytes(4, "little") + body


def test_a_charset_change_re_encodes_the_text_and_keeps_every_other_element_as_received() -> None:
    enc = Encoding(False, True)
    untouched = [(0x00080018, "UI", b"1.2.3.4 "), (0x00200011, "IS", b" 107"), (0x00209165, "AT", b"\x10\x00")]
    raw = _explicit((0x00080005, "CS", b"ISO_IR 100"), *untouched[:1], (0x00080080, "LO", b"Universit\xe4t "),
                    (0x00100010, "PN", b"OLD^NAME"), *untouched[1:])
    header = _header(raw, enc)
    target = {"PatientName": "Dvořák^Antonín",
              "RequestAttributesSequence": [{"ScheduledProcedureStepID": "SPS1", "AccessionNumber": "A1"}]}
    coercion = coerce_header(header.dataset, target, MOD)
    assert coercion.charset_changed
    out = _elements(encode_coerced(header, coercion).head, enc)
    assert [out[tag] for tag, _, _ in untouched] == [_elements(raw, enc)[tag] for tag, _, _ in untouched]
    assert out[0x00080080].endswith("Universität".encode())
    assert out[0x00100010].endswith("Dvořák^Antonín".encode() + b" ")


def test_a_charset_change_keeps_elements_pydicom_cannot_decode_as_received() -> None:
    """An FD of 6 bytes or an unknown VR (a modality's mistakes, stored as sent without a coercion) made the
    whole header's decoding fail when an order's name needed UTF-8: 0xC211 for every resend."""
    enc = Encoding(False, True)
    broken = [(0x00189306, "FD", b"\0" * 6), (0x00191001, "XY", b"ABCD")]
    item = _item_bytes(_explicit((0x00189306, "FD", b"\0" * 6), (0x00400007, "LO", b"Sch\xe4del ")))
    raw = _explicit((0x00080005, "CS", b"ISO_IR 100"), (0x00100010, "PN", b"OLD^NAME"), broken[0],
                    (0x00190010, "LO", b"ACME"), broken[1], (0x00400275, "SQ", item))
    header = _header(raw, enc)
    coercion = coerce_header(header.dataset, {"PatientName": "Dvořák^Antonín"}, MOD)
    head = encode_coerced(header, coercion).head
    out = _elements(head, enc)
    assert [out[tag] for tag, _, _ in broken] == [_elements(raw, enc)[tag] for tag, _, _ in broken]
    assert "Schädel".encode() in out[0x00400275] and b"\0" * 6 in out[0x00400275]
    assert str(read_dataset(BytesIO(head), False, True).PatientName) == "Dvořák^Antonín"


def test_the_spliced_file_reads_back_with_the_coerced_values_and_the_pixels_as_received(tmp_path: Path) -> None:
    enc = Encoding(False, True)
    ds = _base(random.Random(3))
    pixels = b"\x01\x02" * 1000
    raw = _encode(ds, enc)
    header = _header(raw, enc)
    coercion = coerce_header(header.dataset, ORDER_TARGET, MOD)
    meta = encode_file_meta(str(ds.SOPClassUID), str(ds.SOPInstanceUID), _TS[enc], "CT1")
    bulk = b"\xe0\x7f\x10\x00OW\x00\x00" + len(pixels).to_bytes(4, "little") + pixels
    path = tmp_path / "coerced.dcm"
    path.write_bytes(meta + encode_coerced(header, coercion).head + bulk)
    stored = dcmread(path)
    assert (str(stored.PatientName), stored.StudyID, stored.RequestAttributesSequence[0].ScheduledProcedureStepID) == (
        "DOE^JOHN", "RP1", "SPS1")
    assert stored.PixelData == pixels
    assert stored.OriginalAttributesSequence[-1].ModifiedAttributesSequence[0].PatientName == ds.PatientName


# Generated headers -----------------------------------------------------------------------------------------

_TEXT = {"PatientName": "PN", "PatientID": "LO", "AccessionNumber": "SH", "StudyDescription": "LO",
         "StudyID": "SH", "PatientSex": "CS", "PatientBirthDate": "DA", "ReferringPhysicianName": "PN",
         "IssuerOfPatientID": "LO", "InstitutionName": "LO", "StationName": "SH", "StudyDate": "DA",
         "StudyTime": "TM", "SeriesDescription": "LO", "BodyPartExamined": "CS", "ProtocolName": "LO"}


def _word(rng: random.Random, charset: str | None) -> str:
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ^ 0123456789"
    if charset in ("ISO_IR 100", "ISO_IR 192") and rng.random() < 0.3:
        letters += "ÉÖÅçñ"
    return "".join(rng.choice(letters) for _ in range(rng.randint(0, 20))).strip() or "X"


def _value(rng: random.Random, vr: str, charset: str | None) -> str:
    """A valid value of ``vr`` (random text; a date, a time or a code string where the VR says so)."""
    if vr in ("DA", "TM"):
        return {"DA": f"{rng.randint(1900, 2026)}0101", "TM": f"{rng.randint(0, 23):02d}1010"}[vr]
    if vr in ("CS", "SH"):
        code = "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 ") for _ in range(rng.randint(1, 16)))
        return code.strip() or "X"
    return _word(rng, charset)


def _item(rng: random.Random, charset: str | None, depth: int = 0) -> Dataset:
    item = Dataset()
    item.ScheduledProcedureStepID = _word(rng, None)[:16]
    if rng.random() < 0.5:
        item.RequestedProcedureID = _word(rng, None)[:16]
    if rng.random() < 0.5:
        item.ScheduledProcedureStepDescription = _word(rng, charset)[:64]
    if depth < 2 and rng.random() < 0.4:
        code = Dataset()
        code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "C1", "L", _word(rng, charset)
        item.RequestedProcedureCodeSequence = [code]
        item["RequestedProcedureCodeSequence"].is_undefined_length = rng.random() < 0.5
    item.is_undefined_length_sequence_item = rng.random() < 0.5
    return item


def _base(rng: random.Random) -> Dataset:
    ds = Dataset()
    charset = rng.choice([None, None, "ISO_IR 100", "ISO_IR 192"])
    if charset:
        ds.SpecificCharacterSet = charset
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.4", generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    for keyword in ["PatientName", *rng.sample(sorted(_TEXT), rng.randint(3, len(_TEXT)))]:
        setattr(ds, keyword, _value(rng, _TEXT[keyword], charset))
    ds.Rows, ds.Columns, ds.InstanceNumber, ds.SliceThickness = rng.randint(1, 512), 512, rng.randint(1, 99), "1.25"
    ds.ImagePositionPatient = ["-1.5", "2", "3.25"]
    if rng.random() < 0.6:
        ds.RequestAttributesSequence = [_item(rng, charset) for _ in range(rng.randint(1, 2))]
        ds["RequestAttributesSequence"].is_undefined_length = rng.random() < 0.5
    if rng.random() < 0.5:
        ds.add_new(0x00090010, "LO", "ACME 1.0")  # a private block the coercion never touches
        ds.add_new(0x00091001, "OB", rng.randbytes(rng.randint(0, 40) * 2))
        ds.add_new(0x00091002, "SQ", [_item(rng, charset, 2)])
    if rng.random() < 0.3:
        ds.add_new(0x00080000, "UL", 0)  # retired group lengths: dropped (they would be stale)
        ds.add_new(0x00100000, "UL", 0)
    if rng.random() < 0.3:
        earlier = Dataset()
        modified = Dataset()
        modified.PatientName = "EARLIER^NAME"
        earlier.ModifiedAttributesSequence = [modified]
        earlier.AttributeModificationDateTime, earlier.ModifyingSystem = "20200101120000.000000+0000", "PACS"
        earlier.SourceOfPreviousValues, earlier.ReasonForTheAttributeModification = "", "CORRECT"
        ds.OriginalAttributesSequence = [earlier]
    return ds


def _encode(ds: Dataset, enc: Encoding) -> bytes:
    out = DicomBytesIO()
    out.is_implicit_VR, out.is_little_endian = enc.implicit, enc.little
    write_dataset(out, ds)
    raw = out.getvalue()
    if any(tag & 0xFFFF == 0 for tag in (0x00080000, 0x00100000) if tag in ds):
        raw = _with_group_lengths(raw, enc)
    return raw


def _with_group_lengths(raw: bytes, enc: Encoding) -> bytes:
    """pydicom never writes group lengths: put (0008,0000) and (0010,0000) back, as old modalities send them."""
    elements = list(top_level_elements(raw, 0, len(raw), enc))
    order = "little" if enc.little else "big"
    out = b""
    for group in sorted({tag >> 16 for tag, _, _ in elements}):
        body = b"".join(raw[s:e] for tag, s, e in elements if tag >> 16 == group)
        if group in (0x0008, 0x0010):
            head = group.to_bytes(2, order) + b"\x00\x00" + (b"" if enc.implicit else b"UL")
            out += head + (4).to_bytes(4 if enc.implicit else 2, order) + len(body).to_bytes(4, order)
        out += body
    return out


def _target(rng: random.Random, ds: Dataset) -> dict[str, Any]:
    target: dict[str, Any] = {}
    for keyword in rng.sample(sorted(_TEXT), rng.randint(1, 6)):
        current = str(ds.get(keyword, "") or "")
        keep = current and rng.random() < 0.3
        target[keyword] = current if keep else _value(rng, _TEXT[keyword], ds.get("SpecificCharacterSet"))
    if rng.random() < 0.6:
        target["RequestAttributesSequence"] = [{"ScheduledProcedureStepID": "SPS" + str(rng.randint(1, 3)),
                                                "AccessionNumber": "A" + str(rng.randint(1, 3))}]
    if rng.random() < 0.3:
        target["IssuerOfAccessionNumberSequence"] = [{"LocalNamespaceEntityID": _word(rng, None)}]
    return target


def generated(seed: int) -> tuple[random.Random, Encoding, Dataset, dict[str, Any]]:
    """A generated header (its random source left where it stopped), its encoding and a target for it."""
    rng = random.Random(seed)
    ds = _base(rng)
    return rng, ENCODINGS[seed % 3], ds, _target(rng, ds)


@pytest.mark.parametrize("seed", range(300))
def test_generated_headers_splice_as_pydicom_encodes(seed: int) -> None:
    _, enc, ds, target = generated(seed)
    assert_spliced_as_pydicom_encodes(_encode(ds, enc), enc, target)


def test_a_big_endian_transfer_syntax_is_known() -> None:
    assert encoding_of(str(UID("1.2.840.10008.1.2.2"))) == Encoding(False, False)


@pytest.mark.parametrize("duplicate", [False, True], ids=["out of order", "twice"])
def test_an_element_out_of_tag_order_or_twice_is_replaced_once_and_the_header_put_in_order(duplicate: bool) -> None:
    """A sender's AccessionNumber after PatientName (or written twice): the coerced one was inserted in tag order
    and the received one kept, so the stored header held it twice and pydicom (which keeps the last) read the
    value as received: the next coercion changed it again, and the PACS got the modality's value."""
    enc = Encoding(False, True)
    accession = _explicit((0x00080050, "SH", b"ACC99 "))
    name = _explicit((0x00100010, "PN", b"DOE^J "))
    uid = _explicit((0x0020000D, "UI", b"1.2.3\0"))
    raw = accession + name + accession + uid if duplicate else name + accession + uid
    ds = read_dataset(BytesIO(raw), False, True)
    header = Header(ds, raw, len(raw), enc)
    coercion = coerce_header(ds, {"AccessionNumber": "ACCX1"}, Modification(datetime.now(UTC), "RB", "CT1"))
    head = encode_coerced(header, coercion).head
    check_structure(head, 0, len(head), enc)
    tags = [tag for tag, _, _ in top_level_elements(head, 0, len(head), enc)]
    assert tags == sorted(set(tags)) and tags.count(0x00080050) == 1
    assert read_dataset(BytesIO(head), False, True).AccessionNumber == "ACCX1"
    assert name in head and uid in head  # the other elements as received


def _even(value: bytes) -> bytes:
    return value + b" " if len(value) % 2 else value


def test_utf8_text_under_a_declared_latin1_header_is_not_garbled_by_a_switch_to_utf8() -> None:
    """A modality that declares ISO_IR 100 but writes UTF-8 (InstitutionName "Röntgen Zürich" as C3 B6 ...):
    when a coercion needed UTF-8 (a Czech name), every text value was decoded as Latin-1 ("RÃ¶ntgen") and
    re-encoded so in UTF-8: garbled for every reader. Valid UTF-8 is read as UTF-8 now and such an element keeps
    its received bytes; real Latin-1 text (InstitutionalDepartmentName) is still re-encoded."""
    item = _explicit((0x00400007, "LO", _even("Thorax ärztlich".encode())), (0x00400009, "SH", b"SPS1"))
    raw = _explicit((0x00080005, "CS", b"ISO_IR 100"), (0x00080080, "LO", _even("Röntgen Zürich".encode())),
                    (0x00081040, "LO", _even("Abteilung für Radiologie".encode("latin-1"))),
                    (0x00100010, "PN", b"NOVAK^JAN "), (0x00400275, "SQ", _item_bytes(item)))
    enc = Encoding(False, True)
    header = _header(raw, enc)
    target = {"PatientName": "Dvořák^Antonín",
              "RequestAttributesSequence": [{"ScheduledProcedureStepID": "SPS1", "AccessionNumber": "A1"}]}
    coercion = coerce_header(header.dataset, target, MOD)
    assert coercion.charset_changed
    out = encode_coerced(header, coercion).head
    ds = read_dataset(BytesIO(out), False, True)
    assert ds.SpecificCharacterSet == "ISO_IR 192"
    assert (str(ds.PatientName), ds.InstitutionName, ds.InstitutionalDepartmentName) == (
        "Dvořák^Antonín", "Röntgen Zürich", "Abteilung für Radiologie")
    (item,) = ds.RequestAttributesSequence
    assert (item.ScheduledProcedureStepDescription, item.AccessionNumber) == ("Thorax ärztlich", "A1")
    assert _elements(out, enc)[0x00080080] == _elements(raw, enc)[0x00080080]  # kept as received
    old = ds.OriginalAttributesSequence[0].ModifiedAttributesSequence[0]
    assert (old.SpecificCharacterSet, str(old.PatientName)) == ("ISO_IR 100", "NOVAK^JAN")


def test_a_latin1_header_whose_name_differs_only_as_misread_utf8_declares_utf8() -> None:
    """PatientName sent as UTF-8 "Dvořák" under ISO_IR 100 and the order says "Dvořák": read as Latin-1 they
    differ, read as UTF-8 they do not. The header is declared UTF-8 (the change recorded), its bytes kept."""
    raw = _explicit((0x00080005, "CS", b"ISO_IR 100"), (0x00100010, "PN", _even("Dvořák^Antonín".encode())))
    enc = Encoding(False, True)
    header = _header(raw, enc)
    coercion = coerce_header(header.dataset, {"PatientName": "Dvořák^Antonín"}, MOD)
    assert coercion.changed == ("SpecificCharacterSet",)
    out = encode_coerced(header, coercion).head
    ds = read_dataset(BytesIO(out), False, True)
    assert (ds.SpecificCharacterSet, str(ds.PatientName)) == ("ISO_IR 192", "Dvořák^Antonín")
    assert _elements(out, enc)[0x00100010] == _elements(raw, enc)[0x00100010]


def _implicit(*elements: tuple[int, bytes]) -> bytes:
    return b"".join((tag >> 16).to_bytes(2, "little") + (tag & 0xFFFF).to_bytes(2, "little")
                    + len(value).to_bytes(4, "little") + value for tag, value in elements)


def test_private_elements_of_unknown_vr_are_kept_and_recorded_with_the_old_charset_on_a_switch_to_utf8(
        caplog: pytest.LogCaptureFixture) -> None:
    """Implicit VR: a private element no dictionary knows (UN) holding Latin-1 bytes ("Schädel") stayed as
    received under the new ISO_IR 192 with nothing saying it had been ISO_IR 100. Its bytes may be binary as
    well as text, so they are still kept (no guess); the OriginalAttributesSequence item now holds it, with its
    private creator, beside the previous SpecificCharacterSet that governs that item, and a WARNING names it."""
    raw = _implicit((0x00080005, b"ISO_IR 100"), (0x00100010, b"NOVAK^JAN "), (0x00190010, b"ACME 1.0"),
                    (0x00191001, "Schädel ".encode("latin-1")), (0x00191002, b"\x01\x02\x03\x04"),
                    (0x00191003, b"\xe8\x03"))  # a binary number (US 1000): cannot be text
    enc = Encoding(True, True)
    with caplog.at_level("WARNING"):
        out = _named_in_utf8(raw, enc)
    assert _elements(out, enc)[0x00191001] == _elements(raw, enc)[0x00191001]  # kept as received
    ds = read_dataset(BytesIO(out), True, True)
    old = ds.OriginalAttributesSequence[0].ModifiedAttributesSequence[0]
    assert old.SpecificCharacterSet == "ISO_IR 100"
    assert (old[0x00190010].value, old[0x00191001].value) == ("ACME 1.0", "Schädel ".encode("latin-1"))
    assert 0x00191002 not in old and 0x00191003 not in old  # ASCII bytes read the same in UTF-8; binary
    assert "(0019,1001)" in caplog.text and "Sch" not in caplog.text


def _named_in_utf8(raw: bytes, enc: Encoding) -> bytes:
    """The header ``raw`` coerced to a Patient's Name only UTF-8 holds (its character set switched): its bytes."""
    header = _header(raw, enc)
    coercion = coerce_header(header.dataset, {"PatientName": "Dvořák^Antonín"}, MOD)
    assert coercion.charset_changed
    return encode_coerced(header, coercion).head


def _implicit_item(*elements: tuple[int, bytes]) -> bytes:
    """An item of undefined length, then its delimiter (implicit VR little endian)."""
    return b"\xfe\xff\x00\xe0\xff\xff\xff\xff" + _implicit(*elements) + b"\xfe\xff\x0d\xe0\x00\x00\x00\x00"


def _sequence(tag: int, *items: bytes) -> bytes:
    """A sequence of undefined length (implicit VR little endian)."""
    return ((tag >> 16).to_bytes(2, "little") + (tag & 0xFFFF).to_bytes(2, "little") + b"\xff\xff\xff\xff"
            + b"".join(items) + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00")


def test_nested_private_elements_of_unknown_vr_are_recorded_with_the_old_charset_on_a_switch_to_utf8(
        caplog: pytest.LogCaptureFixture) -> None:
    """Implicit VR: private elements no dictionary knows (UN) holding Latin-1 bytes inside sequence items (one
    item deep, and an item within an item) stayed as received under ISO_IR 192 with nothing on record: only
    top-level ones were recorded. The top-level sequence that holds them is now recorded, as received, in the
    OriginalAttributesSequence item beside the previous SpecificCharacterSet, and the WARNING names each path
    once (a per-frame sequence may hold the same element in every item)."""
    schadel, knie = "Schädel ".encode("latin-1"), "Kniegelenk Ü".encode("latin-1")
    inner = _sequence(0x00540412, _implicit_item((0x00080100, b"M1"), (0x00210010, b"ACME 2.0"), (0x00211005, knie)))
    raw = (_implicit((0x00080005, b"ISO_IR 100"))
           + _sequence(0x00082218, _implicit_item((0x00080100, b"T-D1100 "), (0x00190010, b"ACME 1.0"),
                                                  (0x00191001, schadel), (0x00191002, b"\x01\x02\x03\x04")),
                       _implicit_item((0x00080100, b"T-D1200 "), (0x00190010, b"ACME 1.0"), (0x00191001, schadel)))
           + _implicit((0x00100010, b"NOVAK^JAN "))
           + _sequence(0x00400260, _implicit_item((0x00080100, b"P1"), (0x00080102, b"L ")))
           + _sequence(0x00540410, _implicit_item((0x00080100, b"C1"), (0x00080102, b"L "))[:-8] + inner
                       + b"\xfe\xff\x0d\xe0\x00\x00\x00\x00"))
    enc = Encoding(True, True)
    with caplog.at_level("WARNING"):
        out = _named_in_utf8(raw, enc)
    ds = read_dataset(BytesIO(out), True, True)
    assert ds.AnatomicRegionSequence[0][0x00191001].value == schadel  # kept as received
    old = ds.OriginalAttributesSequence[0].ModifiedAttributesSequence[0]
    assert old.SpecificCharacterSet == "ISO_IR 100"
    recorded = old.AnatomicRegionSequence[0]
    assert (recorded[0x00190010].value, recorded[0x00191001].value) == ("ACME 1.0", schadel)
    deeper = old.PatientOrientationCodeSequence[0].PatientOrientationModifierCodeSequence[0]
    assert (deeper[0x00210010].value, deeper[0x00211005].value) == ("ACME 2.0", knie)
    assert 0x00400260 not in old  # its items hold no such element
    assert caplog.text.count("(0008,2218)>(0019,1001)") == 1  # once, though two items hold it
    assert "(0054,0410)>(0054,0412)>(0021,1005)" in caplog.text
    assert "Sch" not in caplog.text and "Knie" not in caplog.text


def test_private_elements_of_unknown_vr_in_iso_2022_escapes_are_recorded_on_a_switch_to_utf8() -> None:
    """Implicit VR, ISO 2022 IR 87 (Japanese, code extensions): a private element no dictionary knows holding
    kanji is all 7-bit bytes (ESC $ B, the JIS X 0208 pairs, ESC ( B), so it was taken for ASCII and not
    recorded, though under ISO_IR 192 it reads as escape sequences and Latin letters, not as "山田"."""
    kanji = "山田".encode("iso2022_jp") + b" "
    assert kanji.isascii() and b"\x1b" in kanji
    raw = (_implicit((0x00080005, b"\\ISO 2022 IR 87 "), (0x00100010, b"YAMADA^TAROU"), (0x00190010, b"ACME 1.0"),
                     (0x00191001, kanji))
           + _sequence(0x00082218, _implicit_item((0x00190010, b"ACME 1.0"), (0x00191001, kanji))))
    enc = Encoding(True, True)
    ds = read_dataset(BytesIO(_named_in_utf8(raw, enc)), True, True)
    old = ds.OriginalAttributesSequence[0].ModifiedAttributesSequence[0]
    assert list(old.SpecificCharacterSet) == ["", "ISO 2022 IR 87"]
    assert old[0x00191001].value == kanji
    assert old.AnatomicRegionSequence[0][0x00191001].value == kanji


def test_previous_values_read_as_utf8_are_recorded_as_received_not_with_question_marks() -> None:
    """A header declaring ISO_IR 100 that holds UTF-8 (read as UTF-8: the tolerant reader) and switches to
    ISO_IR 192: the OriginalAttributesSequence item, which the previous ISO_IR 100 governs, recorded the previous
    name and a nested CodeMeaning encoded in Latin-1, so every character Latin-1 lacks became "?" ("Dvo?ák^A",
    "Ko?en"): the previous values were lost. They are recorded with their bytes as received."""
    name, meaning = "Dvořák^A".encode(), "Kořen".encode()  # 10 and 6 bytes: no padding
    raw = (_implicit((0x00080005, b"ISO_IR 100"), (0x00100010, name))
           + _sequence(0x00082218, _implicit_item((0x00080104, meaning), (0x00190010, b"ACME 1.0"),
                                                  (0x00191001, "Größe ".encode("latin-1")))))
    enc = Encoding(True, True)
    header = _header(raw, enc)
    coercion = coerce_header(header.dataset, {"PatientName": "Nováková^Řehoř"}, MOD)
    assert coercion.charset_changed and coercion.utf8_read
    ds = read_dataset(BytesIO(encode_coerced(header, coercion).head), True, True)
    assert (ds.SpecificCharacterSet, str(ds.PatientName)) == ("ISO_IR 192", "Nováková^Řehoř")
    assert ds.AnatomicRegionSequence[0].CodeMeaning == "Kořen"
    old = ds.OriginalAttributesSequence[0].ModifiedAttributesSequence[0]
    assert old.SpecificCharacterSet == "ISO_IR 100"
    assert old.get_item(0x00100010).value == name
    assert old.AnatomicRegionSequence[0].get_item(0x00080104).value == meaning
