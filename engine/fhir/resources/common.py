"""Pieces the resource modules share: names, codings, references, the normalised string form."""

from __future__ import annotations

import unicodedata
from typing import Any

__all__ = ["V2_0203", "human_name", "ids", "normalise", "reference", "type_coding"]

#: HL7 v2 table 0203 (identifier type) as a FHIR code system.
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"


def type_coding(code: str, display: str) -> dict[str, Any]:
    """An identifier ``type`` from table 0203 (MR, ACSN, PLAC, FILL)."""
    return {"coding": [{"system": V2_0203, "code": code, "display": display}]}


def reference(res_type: str, res_id: object) -> dict[str, Any]:
    """A literal relative reference ``{"reference": "Type/id"}``."""
    return {"reference": f"{res_type}/{res_id}"}


def normalise(text: str) -> str:
    """Case and accents folded, spaces collapsed: the form string search compares (R4 3.1.1.5.6)."""
    decomposed = unicodedata.normalize("NFKD", text)
    plain = "".join(c for c in decomposed if not unicodedata.combining(c))
    return " ".join(plain.casefold().split())


def human_name(pn: str) -> dict[str, Any] | None:
    """A HumanName from a DICOM PN / HL7 XPN in ``Family^Given^Middle^Prefix^Suffix`` form.

    Only the first component group is used (the alphabetic one, or for a name written only in
    ideographic or phonetic characters the first it has). None when every part is empty.
    """
    group = next((g for g in pn.split("=") if g), "")  # alphabetic, else the first group there is
    parts = [p.strip() for p in group.split("^")] + [""] * 5
    family, given, middle, prefix, suffix = parts[:5]
    name: dict[str, Any] = {}
    if family:
        name["family"] = family
    if given or middle:
        name["given"] = [g for g in (given, middle) if g]
    if prefix:
        name["prefix"] = [prefix]
    if suffix:
        name["suffix"] = [suffix]
    if not name:
        return None
    return {"use": "official", **name}


def ids(keys: set[str]) -> list[int]:
    """The integer primary keys among ``keys`` (others name nothing)."""
    return [int(k) for k in keys if k.isdigit() and len(k) < 19]
