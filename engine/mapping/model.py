"""The schema of a mapping file (``mappings/*.yaml``), validated before compiling.

Every model forbids unknown keys so a misspelt key is an error with its file
and line, never a silently ignored rule. ``docs/mapping.schema.json`` is
generated from :class:`MappingFile` (see ``docs/mapping.md``).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["Condition", "MappingFile", "Output", "Rule", "RuleSpec", "TableRef", "json_schema"]

SourceKind = Literal["hl7v2", "dicom", "record"]
TargetKind = Literal["record", "dicom", "fhir", "hl7v2"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Condition(_Model):
    """A test on one source value; every given test must hold."""

    field: str = Field(description="source path, e.g. MSH-9.1")
    equals: str | None = None
    in_: list[str] | None = Field(None, alias="in")
    not_in: list[str] | None = None
    matches: str | None = Field(None, description="regular expression, whole value")
    present: bool | None = Field(None, description="true: non-empty; false: empty")


class TableRef(_Model):
    """A lookup in a code table of ``mappings/tables/``."""

    name: str
    key: list[str] | None = Field(
        None,
        description="source paths matched against the table's first columns (default: the value)",
    )
    column: str | None = Field(
        None, description="result column (default: the column after the key)"
    )
    on_missing: Literal["error", "default", "keep", "empty"] = "error"


class Rule(_Model):
    """How one target field is produced; see docs/mapping.md "Rules"."""

    path: str | list[str] | None = Field(
        None, description="source path, or first non-empty of a list"
    )
    const: str | None = None
    first: list[RuleSpec] | None = Field(None, description="first rule giving a non-empty value")
    when: Condition | list[Condition] | None = None
    transform: list[str | dict[str, Any]] = Field(default_factory=list)
    table: str | TableRef | None = None
    default: str | None = None
    required: bool = False
    each: str | None = Field(None, description="multi-valued path: one object per value")
    fields: dict[str, RuleSpec] | None = Field(None, description="nested object")
    note: str = Field("", description="free text for the analyst; shown in provenance")

    @model_validator(mode="after")
    def _one_source(self) -> Rule:
        sources = [self.path, self.const, self.first, self.fields]
        if sum(s is not None for s in sources) != 1 and not (self.table and self._keyed()):
            raise ValueError("give exactly one of path, const, first, fields (or a keyed table)")
        if self.each is not None and self.fields is None:
            raise ValueError("each needs fields")
        return self

    def _keyed(self) -> bool:
        return isinstance(self.table, TableRef) and self.table.key is not None


RuleSpec = Rule | str | list[str]


class Output(_Model):
    """One kind of output object; repeated per ``for_each`` group."""

    record: str | None = Field(None, description="record targets: patient, merge, order, report")
    resource: str | None = Field(None, description="fhir targets: the R4 resource type")
    segment_order: list[str] | None = Field(None, description="hl7v2 targets: segment order")
    for_each: str | None = Field(None, description="segment that starts each group, e.g. ORC")
    until: list[str] | None = Field(
        None, description="with for_each: segments that end the groups where one follows the first for_each "
        "segment; what comes after is not read (OMG^O19: a PID there starts a PRIOR_RESULT, an earlier order)",
    )
    when: Condition | list[Condition] | None = None
    vars: dict[str, RuleSpec] = Field(default_factory=dict)
    fields: dict[str, RuleSpec]


class MappingFile(_Model):
    """A whole mapping file."""

    description: str = ""
    source: SourceKind
    target: TargetKind
    hl7_version: str = Field(
        "2.5.1", description="version whose structures the paths are checked against"
    )
    accept: list[str] = Field(
        default_factory=list, description="MSH-9 types, e.g. ORM^O01; empty = any"
    )
    outputs: list[Output] = Field(min_length=1)


Rule.model_rebuild()
Output.model_rebuild()
MappingFile.model_rebuild()


def json_schema() -> dict[str, Any]:
    """The JSON Schema of mapping files, as shipped in ``docs/mapping.schema.json``."""
    schema = MappingFile.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "radbridge mapping file"
    return schema
