"""The public surface the engine core relies on."""

from __future__ import annotations

import inspect

import engine.mapping as mapping


def test_public_names_are_exactly_these() -> None:
    assert set(mapping.__all__) == {
        "CodeTable", "CompiledMapping", "CompiledOutput", "MappingResult", "Provenance",
        "TransformContext", "load_mapping", "load_mappings", "mapping_files", "register_transform",
    }  # fmt: skip


def test_load_mapping_signature() -> None:
    params = inspect.signature(mapping.load_mapping).parameters
    assert list(params) == ["path", "tables_dir", "timezone"]
    assert params["tables_dir"].kind is inspect.Parameter.KEYWORD_ONLY


def test_a_site_transform_registers_through_the_same_door(tmp_path: object) -> None:
    from engine.mapping.transforms import get_transform

    def _mrn(value: str, args: tuple[object, ...], ctx: mapping.TransformContext) -> str:
        """Prefix a site MRN."""
        return f"NS-{value}"

    if get_transform("test_site_mrn") is None:
        mapping.register_transform("test_site_mrn", _mrn)
    found = get_transform("test_site_mrn")
    assert found is not None and found.doc == "Prefix a site MRN."


def test_records_are_the_same_without_provenance() -> None:
    from pathlib import Path

    from engine.hl7.er7 import Message

    root = Path(__file__).resolve().parents[2] / "mappings"
    compiled = mapping.load_mappings(root)["order-to-worklist"]
    text = (root / "tests" / "order-to-worklist" / "orm_o01_two_orders.hl7").read_text()
    message = Message(text.replace("\n", "\r"))
    full = compiled.apply(message)
    bare = compiled.apply(message, provenance=False)
    assert bare.records == full.records and len(full.records) == 3
    assert full.provenance and bare.provenance == []
