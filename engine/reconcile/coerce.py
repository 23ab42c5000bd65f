"""Coercing an image header to its order's values, every change recorded (PS3.3 C.12.1.1.9).

:func:`coerce` takes the values a mapping (``mappings/order-to-image.yaml``) says
the header should hold and writes those that differ. What it writes:

* a text value replaces the header's value; an empty mapped value means "the order
  does not say" and leaves the header alone (the modality's value is kept); the
  mapping's NULL (a value the PAS deleted with the HL7 null ``""``, engine.mapping.null)
  empties a header value (an absent attribute stays absent);
* a sequence (a list of item dicts) is merged item by item into the header's
  items: the mapped attributes are set, the item's other attributes stay;
* every previous value goes into one new OriginalAttributesSequence (0400,0561)
  item's ModifiedAttributesSequence, an attribute that was absent as an empty
  element; the item carries AttributeModificationDateTime, ModifyingSystem,
  SourceOfPreviousValues and ReasonForTheAttributeModification. Earlier items
  stay as they are: the new one is appended;
* SpecificCharacterSet becomes ISO_IR 192 when a written value does not fit the
  header's character set (:mod:`engine.reconcile.charset`); the previous value is
  recorded like any other, and every text value is decoded first so that it is
  re-encoded in UTF-8 when written.
"""

from __future__ import annotations

import copy
import functools
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydicom import config
from pydicom.charset import convert_encodings, default_encoding
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement, RawDataElement, convert_raw_data_element
from pydicom.dataset import Dataset
from pydicom.errors import BytesLengthException
from pydicom.multival import MultiValue
from pydicom.valuerep import PersonName

from engine.mapping.null import NULL
from engine.reconcile.charset import needed_charset, single_byte

__all__ = ["COERCE", "CORRECT", "ORIGINAL_ATTRIBUTES_SEQUENCE", "SPECIFIC_CHARACTER_SET", "Coercion", "Modification",
           "coerce", "coerce_header", "definition", "is_empty", "stamp_text"]

log = logging.getLogger(__name__)

COERCE = "COERCE"  # PS3.3 C.12.1.1.9.2: values changed on receipt
CORRECT = "CORRECT"  # values corrected later (ADT update, merge)
ORIGINAL_ATTRIBUTES_SEQUENCE = 0x04000561
SPECIFIC_CHARACTER_SET = 0x00080005


@dataclass(frozen=True, slots=True)
class Modification:
    """Who changed the header, when, why, and where the previous values came from."""

    when: datetime
    modifying_system: str
    source_of_previous_values: str = ""
    reason: str = COERCE


def is_empty(value: Any) -> bool:
    """True for a mapped value that says nothing: "", None, or items that are all empty. NULL says
    "no value" and is not empty; inside items it counts as empty (it never makes an item)."""
    return value is not NULL and _says_nothing(value)


def _says_nothing(value: Any) -> bool:
    if value is None or value == "":
        return True
    if isinstance(value, Mapping):
        return all(_says_nothing(v) for v in value.values())
    if isinstance(value, list):
        return all(_says_nothing(v) for v in value)
    return False


def _canon(value: Any) -> Any:
    """A comparable form of an element value (sequences recursively, padding ignored)."""
    if isinstance(value, Dataset):
        return {int(elem.tag): _canon(elem.value) for elem in value}
    if isinstance(value, list | MultiValue) and value and isinstance(value[0], Dataset):
        return [_canon(item) for item in value]
    if isinstance(value, MultiValue | list | tuple):
        return "\\".join(str(v) for v in value)
    if isinstance(value, bytes):
        return value
    return "" if value is None else str(value).rstrip(" \x00")


#: Item attributes that say what an item stands for, most specific first: a step, else a requested procedure
#: of an accession. A RequestAttributesSequence holds one item per requested procedure the images were
#: acquired for (IHE RAD TF-2 4.8.4.1.3.2, the group case), not only the matched order's.
_ITEM_KEYS = (("ScheduledProcedureStepID",), ("RequestedProcedureID", "AccessionNumber"))


def _key_text(item: Any, keyword: str) -> str:
    try:
        value = item.get(keyword, "") if isinstance(item, Mapping) else getattr(item, keyword, "")
        return "" if value is None or value is NULL else str(value).strip()
    except Exception:  # a malformed value names nothing
        return ""


def _same_item(old: list[Dataset], wanted: Mapping[str, Any]) -> int | None:
    """The index of the header's item that stands for what ``wanted`` stands for: the item that names its step,
    else its requested procedure and accession (:data:`_ITEM_KEYS`), else the first item that names no other
    (every key it holds is ``wanted``'s: an item the modality filled without ids); None when every item names
    another step or requested procedure."""
    for keys in _ITEM_KEYS:
        values = [_key_text(wanted, k) for k in keys]
        if all(values):
            for index, item in enumerate(old):
                if [_key_text(item, k) for k in keys] == values:
                    return index
    named = [k for keys in _ITEM_KEYS for k in keys]
    for index, item in enumerate(old):
        if all(_key_text(item, k) in ("", _key_text(wanted, k)) for k in named):
            return index
    return None


def _merged_items(existing: Any, wanted: list[Any]) -> list[Dataset]:
    """Each wanted item merged into the header's item at its place. One wanted item and several in the header
    (IHE's group case): it is merged into the item that stands for the same step or requested procedure
    (:func:`_same_item`), the header's other items staying (the other requested procedures the image was
    acquired for); when every item names another step or procedure it is appended as an item of its own, so
    that no other procedure's item carries the order's ids beside its own descriptions and codes. An item that
    names no step or requested procedure (a procedure code) replaces the header's items as before: the order
    says which."""
    old = list(existing or [])
    kept = [w for w in wanted if not is_empty(w)]
    if len(kept) == 1 and len(old) > 1 and any(_key_text(kept[0], k) for keys in _ITEM_KEYS for k in keys):
        at = _same_item(old, kept[0])
        if at is None:
            return [*(copy.deepcopy(item) for item in old), _merged_item(None, kept[0])]
        return [_merged_item(item, kept[0]) if index == at else copy.deepcopy(item) for index, item in enumerate(old)]
    return [_merged_item(old[i] if i < len(old) else None, w) for i, w in enumerate(kept)]


def _merged_item(existing: Dataset | None, wanted: Mapping[str, Any]) -> Dataset:
    item = copy.deepcopy(existing) if existing is not None else Dataset()
    for keyword, value in wanted.items():
        if value is NULL:  # empties a value the item holds, adds nothing
            current = _current(item, keyword)
            if current is not None and _canon(current.value) != "":
                _put(item, _replacement(current, keyword, ""))
        elif not is_empty(value):
            _put(item, _replacement(_current(item, keyword), keyword, value))
    return item


@functools.lru_cache(maxsize=1024)
def definition(keyword: str) -> tuple[int, str]:
    """A dictionary keyword's tag and VR."""
    tag = tag_for_keyword(keyword)
    assert tag is not None  # mapping targets are checked against the dictionary at load
    return tag, str(dictionary_VR(tag))


def _element(current: DataElement | None, keyword: str, value: Any) -> DataElement:
    """The element ``keyword`` becomes with ``value``, as ``setattr(ds, keyword, value)`` would make it,
    without changing ``current``: an existing element keeps its VR (and undefined length), a new one takes
    the dictionary's. pydicom's value check is skipped: it only warns, quoting the value (PHI) in the log."""
    if current is None:
        tag, vr = definition(keyword)
        return DataElement(tag, vr, value, validation_mode=config.IGNORE)
    new = copy.copy(current)  # shares nothing it changes: ``value`` is replaced, not mutated
    new.validation_mode = config.IGNORE
    new.value = value
    return new


def _current(ds: Dataset, keyword: str) -> DataElement | None:
    """The element (decoded), or None when absent."""
    return ds[keyword] if keyword in ds else None  # noqa: SIM401 - the element, not its value


def _put(ds: Dataset, elem: DataElement) -> None:
    ds[elem.tag] = elem


def _texts(value: Any) -> Iterator[str]:
    """Every text value in a mapped value (what the character set must be able to hold)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for v in value.values():
            yield from _texts(v)
    elif isinstance(value, list):
        for v in value:
            yield from _texts(v)


def _absent(keyword: str) -> DataElement:
    """The empty element that records "this attribute was not there" (PS3.3 C.12.1.1.9.2)."""
    tag, vr = definition(keyword)
    return DataElement(tag, vr, [] if vr == "SQ" else None)


@dataclass(frozen=True, slots=True)
class _Change:
    """One mapped value that differs: the header's element (None: absent) and its replacement."""

    keyword: str
    old: DataElement | None
    new: DataElement


def _replacement(current: DataElement | None, keyword: str, value: Any) -> DataElement:
    """:func:`_element` for a mapped value: a list of item dicts (or one) is merged into copies of the
    current items."""
    if isinstance(value, Mapping):
        value = [value]
    if isinstance(value, list):
        value = _merged_items(current.value if current is not None else None, value)
    return _element(current, keyword, value)


def _changes(ds: Dataset, wanted: Mapping[str, Any]) -> list[_Change]:
    """The mapped values that differ from the header's, in mapping order; ``ds`` is not changed.

    Reading an element converts it in place (pydicom decodes raw elements on access), which
    changes no value and no encoding.
    """
    found = []
    for keyword, value in wanted.items():
        current = _current(ds, keyword)
        if value is NULL:
            if current is None or _canon(current.value) == "":
                continue  # nothing to delete
            value = ""
        new = _replacement(current, keyword, value)
        if current is None or _canon(new.value) != _canon(current.value):
            found.append(_Change(keyword, current, new))
    return found


#: The VRs whose values SpecificCharacterSet governs (PS3.5 6.1.2.3).
TEXT_VRS = frozenset({"SH", "LO", "ST", "LT", "UC", "UT", "PN"})


def utf8_text(value: bytes) -> bool:
    """True when ``value`` holds bytes beyond ASCII and is valid UTF-8 (a single-byte character set's text
    is that only by a rare accident: a byte of 0xC2-0xF4 followed by one of 0x80-0xBF, C1 controls or
    symbols such as "Ã©" in ISO 8859-1)."""
    if value.isascii():
        return False
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def reads_utf8(charset: object) -> bool:
    """True when text declared in ``charset`` that is valid UTF-8 is read as UTF-8 (:func:`_decode`): the
    default repertoire and the single-byte character sets (one value). Not code extensions (ISO 2022: their
    escapes are ASCII), the multi-byte sets, nor ISO_IR 13 (JIS X 0201: its katakana bytes pair up as UTF-8)."""
    terms = [charset] if isinstance(charset, str) else list(charset or [])  # type: ignore[call-overload]
    if len(terms) > 1:
        return False
    term = str(terms[0]).strip() if terms else ""
    return term in ("", "ISO_IR 6") or (term.startswith("ISO_IR ") and single_byte(term) and term != "ISO_IR 13")


def _decode(ds: Dataset, utf8: str | None = None) -> None:
    """Convert each raw element of ``ds`` and of its items with the character set it was read in.

    An element pydicom cannot convert (a value length its VR does not allow, say an FD of 6 bytes, or
    an unknown VR) stays raw: it holds no text, and it is written back as received
    (:func:`~engine.reconcile.rewrite.encode_coerced`) instead of failing the whole image.

    ``utf8``: the Python codec of the header's character set when it :func:`reads_utf8`; then a text value
    whose bytes are valid UTF-8 beyond ASCII is read as UTF-8: a modality that declares ISO_IR 100 but writes
    UTF-8 (they exist) would otherwise have its "Müller" read as "MÃ¼ller" and, once the header is UTF-8,
    stored so (the tolerant reader: what is unambiguous is read as meant). An element converted already
    (compared with the order's values) is judged by its value encoded back in that codec.
    """
    for tag in list(ds.keys()):
        raw = ds.get_item(tag)
        try:
            elem = ds[tag]
        except (BytesLengthException, NotImplementedError):
            continue
        if elem.VR == "SQ":
            for item in elem.value:
                _decode(item, utf8)
        elif utf8 is not None and elem.VR in TEXT_VRS:
            received = raw.value if isinstance(raw, RawDataElement) else _encoded_back(elem.value, utf8)
            if received and utf8_text(received):
                as_read = RawDataElement(elem.tag, elem.VR, len(received), received, 0, False, True, True, False)
                ds[tag] = convert_raw_data_element(as_read, encoding=["utf_8"], ds=ds)


def _encoded_back(value: Any, codec: str) -> bytes | None:
    """A decoded text value's bytes as received (a name's own; a text encoded in ``codec``), None if unsure."""
    values = list(value) if isinstance(value, MultiValue) else [value]
    parts = []
    for v in values:
        if isinstance(v, PersonName):
            original = v.original_string
            if not isinstance(original, bytes):
                return None
            parts.append(original)
        elif isinstance(v, str):
            try:
                parts.append(v.encode(codec))
            except (UnicodeError, LookupError):
                return None
        else:
            return None
    return b"\\".join(parts)


def _switch_charset(ds: Dataset, charset: str, modified: Dataset) -> None:
    """Decode every text value with the header's own character set (valid UTF-8 as UTF-8 where that is what
    it is, :func:`_decode`), then declare ``charset``."""
    old = ds["SpecificCharacterSet"] if "SpecificCharacterSet" in ds else None  # noqa: SIM401 - the element
    old_value = old.value if old is not None else None
    _decode(ds, convert_encodings(old_value or default_encoding)[0] if reads_utf8(old_value) else None)
    modified["SpecificCharacterSet"] = copy.deepcopy(old) if old is not None else _absent("SpecificCharacterSet")
    _record_unknown_private(ds, modified)
    ds.SpecificCharacterSet = charset


#: The control characters a text value may hold (PS3.5 6.1.3: LF, FF, CR, ESC; TAB in LT/ST/UT).
_TEXT_CONTROLS = frozenset(b"\t\n\f\r\x1b")


def _maybe_text(value: bytes) -> bool:
    """False when ``value`` cannot be text in any character set: a control byte other than :data:`_TEXT_CONTROLS`
    before its padding (a binary number, such as b"\\xe8\\x03")."""
    return all(b >= 0x20 or b in _TEXT_CONTROLS for b in value.rstrip(b"\0 "))


def _beyond_ascii(value: bytes) -> bool:
    """True when ``value`` may hold text that reads differently in UTF-8: bytes beyond ASCII, or an ESC (ISO
    2022 code extensions switch to JIS X 0208 and the like with 7-bit bytes: ESC $ B ... ESC ( B)."""
    return not value.isascii() or b"\x1b" in value


def _unknown_private_text(ds: Dataset, path: str = "") -> Iterator[str]:
    """The path of each private element of unknown VR in ``ds`` and, at any depth, in its sequences' items,
    whose bytes go beyond ASCII (:func:`_beyond_ascii`) and could be text (:func:`_maybe_text`), such as
    "(0008,2218)>(0019,1001)"."""
    for tag in list(ds.keys()):
        elem = ds.get_item(tag)  # decoded by _decode, or raw where pydicom could not
        name = f"{path}({tag.group:04X},{tag.element:04X})"
        if elem.VR == "SQ" and not isinstance(elem, RawDataElement):
            for item in elem.value:
                yield from _unknown_private_text(item, f"{name}>")
        elif tag.is_private and not tag.is_private_creator and elem.VR in ("UN", None):
            value = elem.value
            if isinstance(value, bytes) and _beyond_ascii(value) and _maybe_text(value):
                yield name


def _record_unknown_private(ds: Dataset, modified: Dataset) -> None:
    """Private elements of unknown VR (UN: implicit VR, and neither pydicom's dictionaries nor the sender say
    what they are) whose bytes go beyond ASCII and could be text (:func:`_maybe_text`), recorded in
    ``modified`` with their private creators: a top-level one itself, one inside a sequence's items (at any
    depth) as the whole top-level sequence (an item holds the values of top-level attributes, PS3.3
    C.12.1.1.9.2), its private creators within.

    Their bytes may be text in the header's old character set, or binary: nothing says which, so they are
    kept as received (as dcm4chee and Orthanc keep them), never re-encoded on a guess. Once the header
    declares UTF-8, text among them would read differently: the ModifiedAttributesSequence item holds them
    beside the previous SpecificCharacterSet, which governs that item, so their reading as received stays
    on record; one WARNING names their tags (no values)."""
    found = []
    for tag in list(ds.keys()):
        elem = ds.get_item(tag)
        if not (tag.is_private or elem.VR == "SQ"):
            continue
        paths = list(_unknown_private_text(Dataset({tag: elem})))
        if not paths:
            continue
        if tag.is_private:
            creator = (tag.group << 16) | (tag.element >> 8)
            if creator in ds:
                modified[creator] = copy.deepcopy(ds.get_item(creator))
        modified[tag] = copy.deepcopy(elem)
        found.extend(paths)
    if found:
        log.warning("a header switched to UTF-8 holds private elements of unknown VR beyond ASCII, kept as"
                    " received and recorded in OriginalAttributesSequence with the previous character set: %s",
                    " ".join(dict.fromkeys(found)))  # each path once, however many items hold it


def _as_received(elem: DataElement, codec: str) -> DataElement | RawDataElement:
    """``elem`` as the ModifiedAttributesSequence item records it, under the previous character set (Python codec
    ``codec``) that governs that item: a text value :func:`_decode` read as UTF-8 under a single-byte or default
    character set cannot be encoded in it (every character it lacks would become "?", the previous value lost),
    so it is recorded with its bytes as received (valid UTF-8, read so by radbridge); in a sequence, its items'
    values alike (``elem`` is a copy: its items are changed in place)."""
    if elem.VR == "SQ":
        for item in elem.value or []:
            for tag in list(item.keys()):
                kept = item.get_item(tag)
                if isinstance(kept, DataElement):
                    item[tag] = _as_received(kept, codec)
        return elem
    if elem.VR not in TEXT_VRS or elem.is_empty:
        return elem
    values = list(elem.value) if isinstance(elem.value, MultiValue) else [elem.value]
    try:
        for value in values:
            str(value).encode(codec)
        return elem
    except (UnicodeError, LookupError):
        received = _encoded_back(elem.value, "utf_8")
    if received is None:
        return elem
    received += b" " * (len(received) % 2)
    return RawDataElement(elem.tag, elem.VR, len(received), received, 0, False, True, True, False)


def stamp_text(when: datetime) -> str:
    """The AttributeModificationDateTime (DT) value of a modification at ``when``."""
    return when.strftime("%Y%m%d%H%M%S.%f%z")


def _stamp(mod: Modification, modified: Dataset) -> Dataset:
    item = Dataset()
    for keyword, value in (
        ("ModifiedAttributesSequence", [modified]),
        ("AttributeModificationDateTime", stamp_text(mod.when)),
        ("ModifyingSystem", mod.modifying_system[:64]),
        ("SourceOfPreviousValues", mod.source_of_previous_values[:64]),
        ("ReasonForTheAttributeModification", mod.reason),
    ):
        _put(item, _element(None, keyword, value))
    return item


@dataclass(frozen=True, slots=True)
class Coercion:
    """What :func:`coerce_header` changed: the keywords written (mapping order), and whether the header's
    SpecificCharacterSet changed (then every text value of the header is re-encoded in it)."""

    changed: tuple[str, ...] = ()
    charset_changed: bool = False
    #: The character set changed from one whose text, where valid UTF-8, was read as UTF-8 (:func:`reads_utf8`):
    #: such an element is already right in the new (UTF-8) header and keeps its bytes as received.
    utf8_read: bool = False

    def tags(self) -> frozenset[int]:
        """The top-level elements whose encoding changed (all text elements too when ``charset_changed``)."""
        tags = {tag_for_keyword(k) for k in self.changed}
        tags.add(ORIGINAL_ATTRIBUTES_SEQUENCE)
        if self.charset_changed:
            tags.add(SPECIFIC_CHARACTER_SET)
        return frozenset(t for t in tags if t is not None)


def coerce_header(ds: Dataset, target: Mapping[str, Any], mod: Modification) -> Coercion:
    """Write ``target`` (keyword -> text or list of item dicts) into ``ds``; say what changed.

    ``ds`` is changed in place only when something differs; then one item is appended to its
    OriginalAttributesSequence (earlier items are kept). Nothing is copied to find out whether
    something differs: each mapped value is compared with the header's.
    """
    wanted = {k: v for k, v in target.items() if not is_empty(v) and k != "SpecificCharacterSet"}
    changes = _changes(ds, wanted)
    if not changes:
        return Coercion()
    modified = Dataset()
    current = ds.get("SpecificCharacterSet", None)
    charset = needed_charset(current, (t for v in wanted.values() for t in _texts(v)))
    if charset != current:
        _switch_charset(ds, str(charset), modified)
        changes = _changes(ds, wanted)  # again over the decoded header, as it will be encoded
    for change in changes:
        _put(ds, change.new)
        _put(modified, change.old if change.old is not None else _absent(change.keyword))
    if charset != current and reads_utf8(current):  # values read as UTF-8 are recorded as received
        codec = convert_encodings(current or default_encoding)[0]
        for tag in list(modified.keys()):
            kept = modified.get_item(tag)
            if isinstance(kept, DataElement) and tag != SPECIFIC_CHARACTER_SET:
                modified[tag] = _as_received(copy.deepcopy(kept), codec)
    history = _current(ds, "OriginalAttributesSequence")
    items = [*(history.value if history is not None else []), _stamp(mod, modified)]  # earlier items kept
    _put(ds, _element(history, "OriginalAttributesSequence", items))
    keywords = tuple(c.keyword for c in changes)
    if charset != current and not keywords:  # the values differed only as misread in the declared character
        keywords = ("SpecificCharacterSet",)  # set (UTF-8 under ISO_IR 100): declaring UTF-8 is the change
    return Coercion(keywords, charset != current, charset != current and reads_utf8(current))


def coerce(ds: Dataset, target: Mapping[str, Any], mod: Modification) -> tuple[str, ...]:
    """:func:`coerce_header`, returning only the changed keywords (() when the header already holds
    every mapped value)."""
    return coerce_header(ds, target, mod).changed
