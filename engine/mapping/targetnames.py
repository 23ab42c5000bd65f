"""What a target field name means for each target kind, checked at load.

* record: a field of ``engine.domain.records.RECORD_TYPES[record]``;
* dicom: a keyword path (PS3.6) — ``ScheduledProcedureStepSequence[0].Modality``;
* fhir: an element path of the R4 resource — ``name[0].family``;
* hl7v2: an HL7 path — ``PID-5.1``; a bare segment (``OBX``) with ``each`` is one segment per item.
"""

from __future__ import annotations

import types
import typing
from typing import TYPE_CHECKING, Any, Union

from pydantic import BaseModel

from engine.domain.records import INPUT_TYPES, RECORD_TYPES
from engine.mapping.checks import check_dicom_path, check_hl7_path, suggest
from engine.mapping.null import CLEARED
from engine.mapping.paths import Hl7Path, PathSyntaxError, parse_hl7_path
from engine.mapping.sources import parse_object_path
from engine.mapping.targets import dicom_vr

if TYPE_CHECKING:
    from engine.mapping.compiler import _Compiler
    from engine.mapping.model import Output

__all__ = ["TargetNames", "fhir_model"]

Steps = tuple[tuple[str, int | None], ...]


def fhir_model(resource: str) -> type[BaseModel] | None:
    """The fhir.resources R4B model class of ``resource`` (None if unknown)."""
    from fhir.resources.R4B import get_fhir_model_class

    try:
        found: type[BaseModel] = get_fhir_model_class(resource)
    except (KeyError, ValueError, ImportError, AttributeError):
        return None
    return found


def _submodel(model: type[BaseModel], name: str) -> type[BaseModel] | None:
    info = model.model_fields.get(name)
    pending: list[Any] = [info.annotation] if info else []
    while pending:
        ann = pending.pop()
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            return ann
        if typing.get_origin(ann) in (list, Union, types.UnionType):
            pending.extend(typing.get_args(ann))
    return None


class TargetNames:
    """Checks target names of one output (or nested object) and resolves their paths."""

    def __init__(self, kind: str, model: type[BaseModel] | None = None, version: str = "2.5.1"):
        self.kind = kind
        self.model = model
        self.version = version
        self.steps: dict[str, Steps] = {}
        self.hl7_paths: dict[str, Hl7Path] = {}
        self.segment = ""  # hl7v2-segment: the repeated segment whose fields are named

    @classmethod
    def free(cls) -> TargetNames:
        """Variables: any name."""
        return cls("free")

    @classmethod
    def for_output(
        cls, kind: str, spec: Output, compiler: _Compiler, loc: tuple[str | int, ...]
    ) -> TargetNames:
        """Names for one output; problems with ``record``/``resource`` go to ``compiler``."""
        version = compiler.spec.hl7_version
        if kind == "record":
            if spec.record not in RECORD_TYPES:
                hint = suggest(spec.record or "", RECORD_TYPES)
                known = ", ".join(RECORD_TYPES)
                compiler.problem(
                    (*loc, "record"), f"record targets need record: one of {known} ({hint})"
                )
                return cls("free")
            return cls(kind, RECORD_TYPES[spec.record])
        if kind == "fhir":
            model = fhir_model(spec.resource or "")
            if model is None:
                compiler.problem(
                    (*loc, "resource"), f"{spec.resource!r} is not a FHIR R4 resource type"
                )
                return cls("free")
            return cls(kind, model)
        return cls(kind, None, version)

    def problem(self, target: str) -> str | None:
        """A problem text for ``target``, or None; remembers resolved paths."""
        try:
            return self._check(target)
        except PathSyntaxError as exc:
            return str(exc)

    def _check(self, target: str) -> str | None:
        if self.kind == "record" and self.model is not None:
            names = [n for n in self.model.model_fields if n not in ("record", CLEARED)]
            return (
                None if target in names else f"unknown field {target!r} ({suggest(target, names)})"
            )
        if self.kind == "dicom-item":
            return check_dicom_path(parse_object_path(target))
        if self.kind == "dicom":
            self.steps[target] = parse_object_path(target)
            return check_dicom_path(self.steps[target])
        if self.kind == "fhir" and self.model is not None:
            self.steps[target] = parse_object_path(target)
            first = self.steps[target][0][0]
            names = list(self.model.model_fields)
            return (
                None if first in names else f"{first!r} is not an element ({suggest(first, names)})"
            )
        if self.kind in ("hl7v2", "hl7v2-segment"):
            path = parse_hl7_path(target)
            self.hl7_paths[target] = path
            if self.kind == "hl7v2-segment" and (path.segment != self.segment or path.field is None):
                return f"{target!r}: inside {self.segment} write fields of {self.segment}, e.g. {self.segment}-5"
            return check_hl7_path(path, self.version)
        return None

    def vr(self, target: str) -> str | None:
        """The DICOM VR of a dicom target (for ``truncate`` without length)."""
        if self.kind not in ("dicom", "dicom-item"):
            return None
        try:
            return dicom_vr(parse_object_path(target)[-1][0])
        except PathSyntaxError:
            return None

    def nested(self, target: str) -> TargetNames:
        """Names inside the object produced by ``fields`` at ``target``."""
        if self.kind == "record" and self.model is not None:
            sub = _submodel(self.model, target)
            return TargetNames("record", sub) if sub else TargetNames("free")
        if self.kind == "dicom":
            return TargetNames("dicom-item")
        if self.kind == "hl7v2" and "-" not in target:  # a repeated segment: one per item
            inner = TargetNames("hl7v2-segment", None, self.version)
            inner.segment = target.split("(")[0]
            return inner
        return TargetNames("free")

    def missing_required(self, specs: dict[str, Any]) -> list[str]:
        """Required record fields that the output does not map."""
        if self.kind != "record" or self.model is None:
            return []
        fields = self.model.model_fields
        return [n for n, f in fields.items() if (f.is_required() or _must_map(f)) and n not in specs]

    @staticmethod
    def record_source_problem(steps: Steps) -> str | None:
        """For record sources: ``<record type>.<field>[...]``."""
        kind = steps[0][0]
        model = RECORD_TYPES.get(kind) or INPUT_TYPES.get(kind)
        if model is None:
            return f"{kind!r} is not a record type ({suggest(kind, [*RECORD_TYPES, *INPUT_TYPES])})"
        if len(steps) > 1 and steps[1][0] not in model.model_fields:
            return (
                f"{kind} has no field {steps[1][0]!r} ({suggest(steps[1][0], model.model_fields)})"
            )
        return None


def _must_map(field: Any) -> bool:
    """A field a mapping must map though a record may leave it empty (``json_schema_extra={"mapped": True}``)."""
    extra = field.json_schema_extra
    return isinstance(extra, dict) and extra.get("mapped") is True
