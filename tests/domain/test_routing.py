"""Routing stored images to DICOM destinations: the rules (pure) and queuing in the indexing transaction."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import select

from engine.config.models import DicomDestinationConfig
from engine.domain.instances import IndexOutcome, InstanceAttributes, StoredFile
from engine.domain.routing import (
    INSTANCE_REF_MEDIA_TYPE,
    InstanceRef,
    StoreOrigin,
    destinations_for,
    forwarding_destinations,
    index_and_route,
)
from engine.store.database import Database
from engine.store.schema import outbox
from tests.conftest import migrated

NOW = datetime(2026, 12, 5, 9, 0, tzinfo=UTC)
CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"


def _dest(name: str, routes: list[dict[str, Any]] | None = None, **kw: Any) -> DicomDestinationConfig:
    return DicomDestinationConfig.model_validate(
        {"type": "dicom", "name": name, "host": "pacs.example", "called_ae_title": "PACS",
         "routes": routes or [], **kw})


def _attrs(sop: str = "1.2.9.1", modality: str = "CT", sop_class: str = CT) -> InstanceAttributes:
    return InstanceAttributes(sop_class, sop, "1.2.9", "1.2.9.0", patient_id="P77", modality=modality)


def _names(dests: list[DicomDestinationConfig]) -> list[str]:
    return [d.name for d in dests]


def test_a_destination_without_rules_takes_every_image() -> None:
    assert _names(destinations_for([_dest("pacs")], _attrs(modality="US"), StoreOrigin("ANY"))) == ["pacs"]


def test_rules_route_by_modality_and_calling_ae() -> None:
    ai = _dest("ai", [{"modalities": ["ct"], "calling_ae_titles": ["CT1"]}])
    mammo = _dest("mammo", [{"modalities": ["MG"]}, {"calling_ae_titles": ["MAMMO1"]}])
    dests = [_dest("pacs"), ai, mammo]
    assert _names(destinations_for(dests, _attrs(modality="CT"), StoreOrigin("CT1"))) == ["pacs", "ai"]
    assert _names(destinations_for(dests, _attrs(modality="CT"), StoreOrigin("CT2"))) == ["pacs"]
    assert _names(destinations_for(dests, _attrs(modality="MG"), StoreOrigin("X"))) == ["pacs", "mammo"]
    assert _names(destinations_for(dests, _attrs(modality="OT"), StoreOrigin("MAMMO1"))) == ["pacs", "mammo"]


def test_rules_route_by_sop_class() -> None:
    mr_only = _dest("mr", [{"sop_classes": [MR]}])
    assert _names(destinations_for([mr_only], _attrs(sop_class=MR), StoreOrigin("X"))) == ["mr"]
    assert destinations_for([mr_only], _attrs(sop_class=CT), StoreOrigin("X")) == []


def test_a_destination_without_host_is_off() -> None:
    assert _names(list(forwarding_destinations([_dest("pacs"), _dest("off", host="")]))) == ["pacs"]


def test_instance_ref_round_trips_and_refuses_other_payloads() -> None:
    ref = InstanceRef(7, 2, "1.2.3")
    assert InstanceRef.decode(ref.encode()) == ref
    with pytest.raises(ValueError):
        InstanceRef.decode(b"MSH|^~\\&|")


@pytest.fixture
def store(db_url: str) -> Iterator[Database]:
    yield from migrated(db_url)


def _route(db: Database, attrs: InstanceAttributes, sha: str, dests: list[DicomDestinationConfig]) -> IndexOutcome:
    stored = StoredFile("primary", f"x/{sha[:4]}.dcm", 10, sha, "1.2.840.10008.1.2.1", "CT1", NOW)
    outcome, _ = db.writer.call(lambda c: index_and_route(c, attrs, stored, "replace", dests, NOW))
    return outcome


def _queued(db: Database) -> list[Any]:
    return db.read(lambda c: c.execute(select(outbox).order_by(outbox.c.id)).all())


def test_a_stored_image_is_queued_once_per_destination_keyed_by_study(store: Database) -> None:
    dests = [_dest("pacs"), _dest("ai", [{"modalities": ["CT"]}]), _dest("mr", [{"modalities": ["MR"]}])]
    assert _route(store, _attrs(), "a" * 64, dests) is IndexOutcome.STORED
    rows = _queued(store)
    assert [r.destination for r in rows] == ["pacs", "ai"]
    assert {r.ordering_key for r in rows} == {"1.2.9"}
    assert {r.media_type for r in rows} == {INSTANCE_REF_MEDIA_TYPE}
    ref = InstanceRef.decode(rows[0].payload)
    assert (ref.version, ref.sop_instance_uid) == (1, "1.2.9.1")


def test_a_resend_with_the_same_content_queues_nothing_and_a_new_version_queues_again(store: Database) -> None:
    dests = [_dest("pacs")]
    _route(store, _attrs(), "a" * 64, dests)
    assert _route(store, _attrs(), "a" * 64, dests) is IndexOutcome.UNCHANGED
    assert len(_queued(store)) == 1
    assert _route(store, _attrs(), "b" * 64, dests) is IndexOutcome.REPLACED
    rows = _queued(store)
    assert [InstanceRef.decode(r.payload).version for r in rows] == [1, 2]


def test_ordering_key_none_leaves_the_key_empty(store: Database) -> None:
    _route(store, _attrs(), "a" * 64, [_dest("pacs", ordering_key="none")])
    assert _queued(store)[0].ordering_key == ""
