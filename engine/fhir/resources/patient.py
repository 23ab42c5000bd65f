"""Patient (R4) from ``patients``: identifiers, name, birth date, sex; merges as ``link``.

A patient merged by A40 is ``active: false`` with ``link`` ``replaced-by`` the survivor;
the survivor lists ``replaces`` links to each patient merged into it (R4 Patient.link).
The id is the row's primary key, so references survive identifier changes (A47).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy import Connection, select

from engine.domain.tables import patient_other_ids, patients
from engine.fhir.instant import fhir_date, search_range
from engine.fhir.model import Built, FhirSettings, Param, identifier_system
from engine.fhir.resources.common import human_name, ids, normalise, reference, type_coding

__all__ = ["INCLUDES", "MANDATORY", "PARAMS", "TYPE", "build", "kinds"]

TYPE: str = "Patient"
PARAMS: tuple[Param, ...] = (
    Param("identifier", "token", documentation="MRN and other ids: system|value"),
    Param("name", "string"),
    Param("family", "string"),
    Param("given", "string"),
    Param("birthdate", "date"),
    Param("gender", "token"),
    Param("active", "token"),
    Param("link", "reference", ("Patient",)),
)
#: Its elements of cardinality 1..1: kept by ``_elements`` (R4 3.1.1.5.9, mandatory elements SHOULD be returned).
MANDATORY: tuple[str, ...] = ()
INCLUDES: tuple[str, ...] = ()

#: DICOM (0010,0040) / HL7 table 0001 → FHIR AdministrativeGender.
_GENDER = {"M": "male", "F": "female", "O": "other", "U": "unknown", "A": "other", "N": "other"}


def _with_survivors(conn: Connection, keys: set[str]) -> set[str]:
    """The patients named, and the survivors they were merged into (whose ``replaces`` links change)."""
    pks = ids(keys)
    rows = conn.execute(select(patients.c.merged_into_id).where(patients.c.id.in_(pks),
                                                                patients.c.merged_into_id.is_not(None)))
    return {str(pk) for pk in pks} | {str(r[0]) for r in rows}


def kinds() -> Mapping[str, Callable[[Connection, set[str]], set[str]]]:
    """Pending kinds that change Patients."""
    return {"Patient": _with_survivors}


def _identifiers(row: Any, others: list[Any], settings: FhirSettings) -> list[dict[str, Any]]:
    found = [{"use": "usual", "type": type_coding("MR", "Medical record number"),
              "system": identifier_system(settings, row.issuer, settings.patient_id_system), "value": row.patient_id}]
    for other in others:
        found.append({"system": identifier_system(settings, other.issuer, settings.patient_id_system),
                      "value": other.patient_id})
    return found


def _body(row: Any, others: list[Any], replaced: list[int], settings: FhirSettings) -> Built:
    body: dict[str, Any] = {"resourceType": TYPE, "id": str(row.id),
                            "identifier": _identifiers(row, others, settings),
                            "active": row.status != "MERGED"}
    built = Built(TYPE, str(row.id), body)
    name = human_name(row.patient_name)
    if name is not None:
        body["name"] = [name]
        for part in [name.get("family", ""), *name.get("given", [])]:
            built.strings.append(("name", normalise(part)))
        built.strings += [("family", normalise(name["family"]))] if "family" in name else []
        built.strings += [("given", normalise(g)) for g in name.get("given", [])]
    if row.sex.strip().upper() in _GENDER:
        body["gender"] = _GENDER[row.sex.strip().upper()]
        built.tokens.append(("gender", "http://hl7.org/fhir/administrative-gender", body["gender"]))
    birth = fhir_date(row.birth_date)
    if birth is not None:
        body["birthDate"] = birth
        built.dates.append(("birthdate", *search_range(birth, settings.site_zone)))
    links: list[dict[str, Any]] = [{"other": reference(TYPE, pk), "type": "replaces"} for pk in replaced]
    if row.status == "MERGED" and row.merged_into_id is not None:
        links.insert(0, {"other": reference(TYPE, row.merged_into_id), "type": "replaced-by"})
    if links:
        body["link"] = links
        built.refs += [("link", link["other"]["reference"]) for link in links]
    built.tokens.append(("active", "", "true" if body["active"] else "false"))
    built.tokens += [("identifier", i["system"], i["value"]) for i in body["identifier"]]
    return built


def build(conn: Connection, keys: set[str], settings: FhirSettings) -> dict[str, Built | None]:
    """The Patients with these ids (None for an id with no row)."""
    pks = ids(keys)
    built: dict[str, Built | None] = dict.fromkeys(keys)
    others: dict[int, list[Any]] = {}
    for other in conn.execute(select(patient_other_ids).where(patient_other_ids.c.patient_pk.in_(pks))
                              .order_by(patient_other_ids.c.id)):
        others.setdefault(int(other.patient_pk), []).append(other)
    replaced: dict[int, list[int]] = {}
    for prior in conn.execute(select(patients.c.id, patients.c.merged_into_id)
                              .where(patients.c.merged_into_id.in_(pks)).order_by(patients.c.id)):
        replaced.setdefault(int(prior.merged_into_id), []).append(int(prior.id))
    for row in conn.execute(select(patients).where(patients.c.id.in_(pks))):
        built[str(row.id)] = _body(row, others.get(int(row.id), []), replaced.get(int(row.id), []), settings)
    return built
