"""A compiled mapping: applying it to one message (or record, or dataset).

Everything that can be decided when the file is loaded (paths parsed, tables
indexed, transforms bound, targets resolved) was decided by
:mod:`engine.mapping.compiler`; applying only reads values and builds dicts.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from engine.errors import ErrorLocation, HL7ApplicationError, HL7Error, HL7Reject
from engine.hl7.er7 import Message, Separators
from engine.mapping.codegen import GiveUp
from engine.mapping.evaluate import SKIP, CompiledCondition, CompiledRule, evaluate_rule, plain_rule
from engine.mapping.null import CLEARED, NULL
from engine.mapping.paths import Hl7Path, target_path
from engine.mapping.result import MappingResult, RawProvenance
from engine.mapping.scope import groups, message_scope
from engine.mapping.sources import Context
from engine.mapping.targets import put, render_hl7
from engine.mapping.transforms import STANDARD_SEPARATORS

if TYPE_CHECKING:
    from engine.mapping.codegen import FastBuild

__all__ = ["CompiledMapping", "CompiledOutput"]

log = logging.getLogger(__name__)

Steps = tuple[tuple[str, int | None], ...]


@dataclass(frozen=True, slots=True)
class CompiledOutput:
    """One ``outputs:`` entry."""

    kind: str  # record | dicom | fhir | hl7v2
    name: str  # record type, resource type, or "" for dicom/hl7v2
    for_each: str | None
    conditions: tuple[CompiledCondition, ...]
    vars: tuple[CompiledRule, ...]
    fields: tuple[CompiledRule, ...]
    steps: dict[str, Steps]  # dicom/fhir target path of each field
    hl7_targets: dict[str, Hl7Path]
    segment_order: tuple[str, ...] = ()
    fhir_model: type[BaseModel] | None = None
    #: Segments that end the ``for_each`` groups (engine.mapping.scope.groups).
    until: tuple[str, ...] = ()
    #: The same output generated as Python (engine.mapping.codegen); None: interpreted only.
    fast: FastBuild | None = field(default=None, compare=False, repr=False)

    def build(self, ctx: Context, out: list[RawProvenance]) -> dict[str, Any] | None:
        """The output for one scope, or None when its ``when`` does not hold."""
        if self.conditions and not all(c.holds(ctx) for c in self.conditions):
            return None
        for var in self.vars:
            value = evaluate_rule(var, ctx, out, "$")
            ctx.vars[var.target] = None if value is SKIP else value
        values: list[tuple[CompiledRule, Any]] = []
        for rule in self.fields:
            value = (
                plain_rule(rule, ctx, out, "", True)
                if rule.plain
                else evaluate_rule(rule, ctx, out, "")
            )
            if value is not SKIP:
                values.append((rule, _flat(value) if value.__class__ is list else value))
        return self._shape(values, ctx)

    def _shape(self, values: list[tuple[CompiledRule, Any]], ctx: Context) -> dict[str, Any]:
        if self.kind == "record":
            return record_of(self.name, values)
        if self.kind == "hl7v2":
            return {"message": self._hl7(values, ctx.seps)}
        obj: dict[str, Any] = {"resourceType": self.name} if self.kind == "fhir" else {}
        for rule, value in values:
            if self.kind == "dicom":
                put(obj, self.steps[rule.target], _sequence(value))
            elif value not in ("", None, [], {}):
                put(obj, self.steps[rule.target], value)
        if self.fhir_model is not None:
            _check_fhir(self.fhir_model, obj)
        return obj


    def _hl7(self, values: list[tuple[CompiledRule, Any]], seps: Separators) -> str:
        """ER7 text: single values into their places, ``each`` items as one segment each."""
        pairs: list[tuple[Hl7Path, str]] = []
        repeated: dict[str, list[list[tuple[Hl7Path, str]]]] = {}
        for rule, value in values:
            if rule.each is not None and isinstance(value, list):
                segment = self.hl7_targets[rule.target].segment
                repeated[segment] = [
                    [(target_path(k), str(v)) for k, v in item.items() if v not in ("", None)]
                    for item in value if isinstance(item, dict)
                ]  # fmt: skip
            elif value:
                pairs.append((self.hl7_targets[rule.target], str(value)))
        return render_hl7(pairs, list(self.segment_order), seps, repeated)


def record_of(name: str, values: list[tuple[CompiledRule, Any]]) -> dict[str, Any]:
    """A record output: its fields, and under ``cleared`` those that came out null (HL7 ``""``).

    A null field holds "" (it has no value); ``cleared`` is what tells the domain that the
    sender asked to delete the stored value rather than said nothing (engine.mapping.null).
    """
    record: dict[str, Any] = {"record": name}
    cleared: list[str] = []
    for rule, value in values:
        if value is NULL:
            value = ""
            cleared.append(rule.target)
        record[rule.target] = value
    if cleared:
        record[CLEARED] = cleared
    return record


_REPORTED: set[tuple[str, str, str]] = set()


def _unexpected(mapping: str, output: str, exc: Exception) -> None:
    """A generated function failed where the interpreter may not: said once per kind (a generator bug,
    or a transform that fails on what the interpreter gives it)."""
    key = (mapping, output, type(exc).__name__)
    if key not in _REPORTED:
        _REPORTED.add(key)
        log.warning("mapping %s output %s: generated code raised %s; the interpreter evaluated it",
                    mapping, output, type(exc).__name__)


def _check_fhir(model: type[BaseModel], obj: dict[str, Any]) -> None:
    """Validate a FHIR output with fhir.resources (R4B) before anyone uses it."""
    try:
        model.model_validate(obj)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        text = f"{obj.get('resourceType')} is not valid FHIR R4: {where}: {first['msg']}"
        raise HL7ApplicationError(102, text) from exc


def _flat(value: Any) -> Any:
    """Several text values in one text field are joined with the DICOM delimiter ``\\``."""
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return "\\".join(value)
    return value


def _sequence(value: Any) -> Any:
    """A nested object written to a DICOM sequence becomes its single item (PS3.5 7.5)."""
    if isinstance(value, dict):
        return [_sequence_item(value)]
    if value is None:
        return []
    if isinstance(value, list) and value and isinstance(value[0], dict):
        return [_sequence_item(v) for v in value]
    return value


def _sequence_item(item: dict[str, Any]) -> dict[str, Any]:
    return {k: _sequence(_flat(v)) for k, v in item.items()}


@dataclass(frozen=True, slots=True)
class CompiledMapping:
    """A validated, compiled mapping file; apply it as often as needed, from any thread."""

    name: str
    source: str  # hl7v2 | dicom | record
    target: str  # record | dicom | fhir | hl7v2
    accept: frozenset[str]
    outputs: tuple[CompiledOutput, ...]
    path: str = ""

    def accepts(self, message: Message) -> bool:
        """True when MSH-9 (code^trigger) is one this mapping is written for."""
        return not self.accept or message.message_type in self.accept

    def apply(self, message: Message, *, provenance: bool = True) -> MappingResult:
        """Map one HL7 v2 message; raises HL7Error (see engine.mapping) on bad data.

        With ``provenance=False`` the result's provenance stays empty: the records are
        the same, without the cost of describing where every value came from.
        """
        if self.source != "hl7v2":
            raise TypeError(f"mapping {self.name} reads {self.source}; use apply_to")
        self._check_type(message)
        records: list[dict[str, Any]] = []
        prov: list[RawProvenance] = []
        seps = message.seps
        if seps == STANDARD_SEPARATORS:
            seps = STANDARD_SEPARATORS
        whole = message_scope(message)
        for output in self.outputs:
            for scope in groups(message, output.for_each, whole, output.until):
                ctx = Context(seps, message, scope, provenance=provenance)
                if output.fast is None or provenance:
                    self._collect(output, ctx, records, prov)
                    continue
                try:
                    built = output.fast(ctx)
                except Exception as exc:  # GiveUp or an error: the interpreter decides, with its own error
                    if not isinstance(exc, GiveUp | HL7Error):
                        _unexpected(self.name, output.name, exc)
                    self._collect(output, Context(seps, message, scope, provenance=False), records, prov)
                    continue
                if built is not None:
                    records.append(built)
        return MappingResult(records, prov)

    def apply_to(self, obj: Any, *, provenance: bool = True) -> MappingResult:
        """Map a record dict (``{"order": {...}, "patient": {...}}``) or a DICOM dataset.

        ``provenance=False``: the same outputs without describing where each value came from.
        """
        if self.source == "hl7v2":
            if isinstance(obj, Message):
                return self.apply(obj, provenance=provenance)
            raise TypeError(f"mapping {self.name} reads HL7 v2 messages; use apply")
        records: list[dict[str, Any]] = []
        prov: list[RawProvenance] = []
        for output in self.outputs:
            ctx = Context(STANDARD_SEPARATORS, obj=obj, provenance=provenance)
            if output.fast is None or provenance:
                self._collect(output, ctx, records, prov)
                continue
            try:
                built = output.fast(ctx)
            except Exception as exc:  # GiveUp or an error: the interpreter decides, with its own error
                if not isinstance(exc, GiveUp | HL7Error):
                    _unexpected(self.name, output.name, exc)
                self._collect(output, Context(STANDARD_SEPARATORS, obj=obj, provenance=False), records, prov)
                continue
            if built is not None:
                records.append(built)
        return MappingResult(records, prov)

    @staticmethod
    def _collect(
        output: CompiledOutput,
        ctx: Context,
        records: list[dict[str, Any]],
        prov: list[RawProvenance],
    ) -> None:
        mark = len(prov)
        ctx.output = len(records)
        built = output.build(ctx, prov)
        if built is None:
            del prov[mark:]
            return
        records.append(built)

    def _check_type(self, message: Message) -> None:
        if self.accepts(message):
            return
        codes = {t.split("^", 1)[0] for t in self.accept}
        where = ErrorLocation("MSH", 1, 9, 1 if message.message_code not in codes else 2)
        code = 200 if where.component == 1 else 201
        raise HL7Reject(code, f"mapping {self.name} does not take {message.message_type}", where)
