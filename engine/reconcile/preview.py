"""What coercing a given image to a mapping's output would change (``radbridge mapping test --image``).

Lets an analyst try ``mappings/order-to-image.yaml`` against a real image from a
modality before it reaches the archive: each attribute that would change, with
its value before and after, the same :func:`~engine.reconcile.coerce.coerce` the
storage SCP runs. Only the header is read; nothing is written.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset

from engine.reconcile.coerce import Modification, coerce

__all__ = ["Change", "preview"]


@dataclass(frozen=True, slots=True)
class Change:
    """One attribute the coercion would change."""

    keyword: str
    before: str
    after: str


def _shown(ds: Dataset, keyword: str) -> str:
    if keyword not in ds:
        return "(absent)"
    value: Any = ds[keyword].value
    if ds[keyword].VR == "SQ":
        items = [{e.keyword: str(e.value) for e in item if e.VR != "SQ"} for item in value]
        return "; ".join(", ".join(f"{k}={v}" for k, v in item.items()) for item in items) or "(empty)"
    return str(value)


def preview(image: Path, target: dict[str, Any]) -> list[Change]:
    """The changes coercing ``image`` to ``target`` (one dicom-target output) would make, in mapping order."""
    ds = dcmread(image, stop_before_pixels=True)
    before = {k: _shown(ds, k) for k in (*target, "SpecificCharacterSet")}
    changed = coerce(ds, target, Modification(datetime.now(UTC), "mapping test"))
    keys = [*changed, "SpecificCharacterSet"] if changed else []
    return [Change(k, before[k], _shown(ds, k)) for k in keys if before[k] != _shown(ds, k)]
