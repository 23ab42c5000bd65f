"""Remembered coercions (:mod:`engine.reconcile.memo`) against coercing each header afresh.

A header coerced from memory must be byte-identical to the same header coerced and spliced by
pydicom (:func:`~engine.reconcile.coerce.coerce_header`, :func:`~engine.reconcile.rewrite.encode_coerced`)
at its own modification time, over generated headers (three encodings, sequences, private blocks,
group lengths, earlier OriginalAttributesSequence items, character sets) and every corpus header; and
whatever a coercion reads makes another key.
"""

from __future__ import annotations

import copy
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from engine.archive.structure import Encoding
from engine.domain.instances import FIELDS, InstanceAttributes
from engine.reconcile.coerce import Coercion, Modification, coerce_header
from engine.reconcile.memo import CoercionMemo
from engine.reconcile.rewrite import element_spans, encode_coerced, encoded_elements, splice

from .test_splice import ENCODINGS, ORDER_TARGET, _base, _corpus_headers, _encode, _header, generated

T1 = datetime(2026, 12, 6, 9, 0, 0, 123456, tzinfo=UTC)
T2 = T1 + timedelta(seconds=1, microseconds=7)


def _mod(when: datetime, source: str = "CT1") -> Modification:
    return Modification(when, "RADBRIDGE", source)


def _afresh(raw: bytes, enc: Encoding, target: dict[str, Any], when: datetime) -> tuple[tuple[str, ...], bytes,
                                                                                          InstanceAttributes]:
    """What a header coerces to without the memo: changed keywords, header bytes, index attributes."""
    header = _header(raw, enc)
    before = InstanceAttributes.from_dataset(header.dataset)
    coercion = coerce_header(header.dataset, target, _mod(when))
    if not coercion.changed:
        return (), raw, before
    return coercion.changed, encode_coerced(header, coercion).head, InstanceAttributes.from_dataset(header.dataset)


def _learn(memo: CoercionMemo, raw: bytes, enc: Encoding, target: dict[str, Any], when: datetime) -> bool:
    """Coerce ``raw`` as the reconciler does on a miss, and remember it."""
    header = _header(raw, enc)
    key = memo.key(header, element_spans(header), target, _mod(when))
    coercion = coerce_header(header.dataset, target, _mod(when))
    tags = coercion.tags()
    elements = encoded_elements(header, tags) if coercion.changed else {}
    after = InstanceAttributes.from_dataset(header.dataset)
    return memo.remember(key, target, coercion, elements, when, after.values_at(tags))


def _recalled(memo: CoercionMemo, raw: bytes, enc: Encoding, target: dict[str, Any],
              when: datetime) -> tuple[tuple[str, ...], bytes, InstanceAttributes] | None:
    """Coerce ``raw`` from memory, as the reconciler does on a hit; None on a miss."""
    header = _header(raw, enc)
    spans = element_spans(header)
    recalled = memo.recall(memo.key(header, spans, target, _mod(when)), target, when)
    if recalled is None:
        return None
    before = InstanceAttributes.from_dataset(header.dataset)
    if not recalled.changed:
        return (), raw, before
    after = InstanceAttributes(**{**{f: getattr(before, f) for f in FIELDS}, **recalled.extra})
    return recalled.changed, splice(raw, spans, recalled.elements), after


def _sibling(raw_ds: Any, rng: random.Random) -> Any:
    """Another image of the same series: its own UID, number, size and private bytes, the same mapped values."""
    ds = copy.deepcopy(raw_ds)
    ds.SOPInstanceUID, ds.InstanceNumber, ds.Rows = generate_uid(), rng.randint(100, 999), rng.randint(1, 512)
    if 0x00091001 in ds:
        ds[0x00091001].value = rng.randbytes(6)
    return ds


@pytest.mark.parametrize("seed", range(240))
def test_a_sibling_coerced_from_memory_is_byte_identical_to_one_coerced_afresh(seed: int) -> None:
    rng, enc, ds, target = generated(seed)
    memo = CoercionMemo()
    remembered = _learn(memo, _encode(ds, enc), enc, target, T1)
    raw = _encode(_sibling(ds, rng), enc)
    got = _recalled(memo, raw, enc, target, T2)
    want = _afresh(raw, enc, target, T2)
    if not remembered:  # only a character set change is not remembered
        assert got is None
        assert coerce_header(_header(_encode(ds, enc), enc).dataset, target, _mod(T1)).charset_changed
        return
    assert got == want


def test_most_generated_coercions_are_remembered() -> None:
    remembered = changed = 0
    for seed in range(200):
        _, enc, ds, target = generated(seed)
        remembered += _learn(CoercionMemo(), _encode(ds, enc), enc, target, T1)
        changed += bool(_afresh(_encode(ds, enc), enc, target, T1)[0])
    assert remembered >= 150 and changed >= 150  # the test above compares real coercions, not misses


def test_every_corpus_header_coerced_from_memory_is_byte_identical(corpus: Path) -> None:
    hits = 0
    for name, raw, enc in _corpus_headers(corpus):
        for target in (ORDER_TARGET, {"PatientName": "Buc^Jérôme", "StudyID": "7"}, {"PatientID": "X" * 64}):
            memo = CoercionMemo()
            if not _learn(memo, raw, enc, target, T1):
                continue
            got = _recalled(memo, raw, enc, target, T2)
            assert got is not None, name
            assert got == _afresh(raw, enc, target, T2), name
            hits += 1
    assert hits > 100


def _key(raw: bytes, enc: Encoding, target: dict[str, Any], mod: Modification) -> Any:
    header = _header(raw, enc)
    return CoercionMemo().key(header, element_spans(header), target, mod)


def test_what_a_coercion_reads_is_in_its_key() -> None:
    rng = random.Random(7)
    enc = ENCODINGS[0]
    ds = _base(rng)
    ds.RequestAttributesSequence = []
    target = dict(ORDER_TARGET)
    key = _key(_encode(ds, enc), enc, target, _mod(T1))
    assert _key(_encode(_sibling(ds, rng), enc), enc, target, _mod(T2)) == key  # time, UIDs, other elements: same
    for change in ("PatientName", "PatientID", "AccessionNumber", "RequestAttributesSequence",
                   "SpecificCharacterSet", "OriginalAttributesSequence", "IssuerOfAccessionNumberSequence"):
        other = copy.deepcopy(ds)
        if change == "SpecificCharacterSet":
            other.SpecificCharacterSet = "ISO_IR 100" if ds.get("SpecificCharacterSet") != "ISO_IR 100" else "ISO_IR 6"
        elif change.endswith("Sequence"):
            item = Dataset()
            item.CodeValue = "ZZ"
            setattr(other, change, [item])
        else:
            setattr(other, change, "OTHER^VALUE" if change == "PatientName" else "OTHER")
        assert _key(_encode(other, enc), enc, target, _mod(T1)) != key, change
    assert _key(_encode(ds, enc), ENCODINGS[1], target, _mod(T1)) != key  # read in another encoding
    assert _key(_encode(ds, enc), enc, dict(target), _mod(T1)) != key  # another version of the order's values
    assert _key(_encode(ds, enc), enc, target, _mod(T1, "MR2")) != key  # SourceOfPreviousValues
    later = Modification(T1, "RADBRIDGE", "CT1", "CORRECT")
    assert _key(_encode(ds, enc), enc, target, later) != key


def test_a_recalled_coercion_needs_the_same_target_object_and_a_time_of_the_same_length() -> None:
    enc = ENCODINGS[0]
    ds = _base(random.Random(11))
    target = dict(ORDER_TARGET)
    raw = _encode(ds, enc)
    memo = CoercionMemo()
    assert _learn(memo, raw, enc, target, T1)
    header = _header(raw, enc)
    key = memo.key(header, element_spans(header), target, _mod(T1))
    assert memo.recall(key, dict(target), T2) is None  # an equal dict is another object: not trusted
    assert memo.recall(key, target, T2) is not None
    naive = datetime(2026, 12, 6, 9, 0, 0, 5)  # no UTC offset: another length
    assert memo.recall(key, target, naive) is None


def test_a_header_that_already_holds_the_values_is_remembered_as_unchanged() -> None:
    enc = ENCODINGS[0]
    ds = _base(random.Random(12))
    target = {"PatientName": str(ds.PatientName)}
    memo = CoercionMemo()
    raw = _encode(ds, enc)
    assert _learn(memo, raw, enc, target, T1)
    unchanged = InstanceAttributes.from_dataset(_header(raw, enc).dataset)
    assert _recalled(memo, raw, enc, target, T2) == ((), raw, unchanged)


def test_a_character_set_change_is_not_remembered() -> None:
    enc = ENCODINGS[0]
    ds = _base(random.Random(13))
    if "SpecificCharacterSet" in ds:
        del ds.SpecificCharacterSet
    target = {"PatientName": "Åström^Jöns"}
    memo = CoercionMemo()
    assert not _learn(memo, _encode(ds, enc), enc, target, T1)
    assert _recalled(memo, _encode(ds, enc), enc, target, T2) is None


def test_the_memo_keeps_a_bounded_number_of_entries() -> None:
    enc = ENCODINGS[0]
    memo = CoercionMemo(entries=3)
    raws = []
    target = {"PatientName": "DOE^JOHN"}
    for n in range(5):
        ds = _base(random.Random(20 + n))
        ds.PatientName = f"NAME^{n}"
        raws.append(_encode(ds, enc))
        assert _learn(memo, raws[-1], enc, target, T1)
    assert [_recalled(memo, raw, enc, target, T2) is not None for raw in raws] == [False, False, True, True, True]


def test_an_attribute_whose_vr_depends_on_another_element_is_never_remembered() -> None:
    enc = ENCODINGS[1]  # implicit VR: the VR of (0028,0106) follows PixelRepresentation
    ds = _base(random.Random(14))
    target: dict[str, Any] = {"PatientName": "DOE^JOHN", "SmallestImagePixelValue": "0"}
    header = _header(_encode(ds, enc), enc)
    memo = CoercionMemo()
    assert memo.key(header, element_spans(header), target, _mod(T1)) is None
    assert not memo.remember(None, target, Coercion(("PatientName",)), {}, T1)
    assert memo.recall(None, target, T2) is None
