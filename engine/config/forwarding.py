"""Checks of the DICOM destinations in ``engine.yaml`` that one model cannot make alone.

Each problem is ``file:line: field: message``, like the other reference checks
(:mod:`engine.config.references`): a forwarding setup that could never forward
anything, or that names something that cannot exist, is refused at load instead
of silently forwarding nothing.
"""

from __future__ import annotations

from engine.config import Config
from engine.config.loader import did_you_mean
from engine.config.models import DicomDestinationConfig, EngineConfig
from engine.domain.instances import is_valid_uid

__all__ = ["forwarding_problems"]

def forwarding_problems(config: Config) -> list[str]:
    """Every problem of the DICOM destinations of ``config`` (empty when there are none)."""
    engine = config.engine
    out: list[str] = []
    for i, d in enumerate(engine.destinations):
        if isinstance(d, DicomDestinationConfig):
            out += _destination_problems(config, i, d)
    status = engine.mpps.status_destination
    if any(isinstance(d, DicomDestinationConfig) and d.name == status for d in engine.destinations):
        out.append(f"{config.where(config.engine_file, ('mpps', 'status_destination'))}: {status!r} is a DICOM"
                   " destination; the MPPS status message is HL7 (name an mllp or http destination)")
    return out


def _destination_problems(config: Config, index: int, d: DicomDestinationConfig) -> list[str]:
    engine = config.engine

    def where(*loc: str | int) -> str:
        return config.where(config.engine_file, ("destinations", index, *loc))

    out = []
    if d.on_correction == "hl7" and not d.correction_hl7_destination:
        out.append(f"{where('on_correction')}: hl7 needs correction_hl7_destination (the mllp destination that"
                   " gets the ADT)")
    elif d.on_correction == "hl7":
        out += _hl7_target_problems(engine, d.correction_hl7_destination, where("correction_hl7_destination"))
    elif d.correction_hl7_destination:
        out.append(f"{where('correction_hl7_destination')}: used only with on_correction: hl7"
                   f" (now {d.on_correction})")
    if d.host and not (engine.dicom.enabled and engine.archive.enabled):
        out.append(f"{where('type')}: {d.name!r} forwards stored images, but images are not received"
                   " (dicom.enabled and archive.enabled must be true)")
    allowed = engine.dicom.accepted_calling_ae_titles
    for r, rule in enumerate(d.routes):
        for a, title in enumerate(rule.calling_ae_titles):
            if allowed and title not in allowed:
                out.append(f"{where('routes', r, 'calling_ae_titles', a)}: {title!r} is not in"
                           f" dicom.accepted_calling_ae_titles, so this rule never matches"
                           f" ({did_you_mean(title, allowed)})")
        for s, uid in enumerate(rule.sop_classes):
            if not is_valid_uid(uid):
                out.append(f"{where('routes', r, 'sop_classes', s)}: {uid!r} is not a SOP Class UID")
    return out


def _hl7_target_problems(engine: EngineConfig, name: str, where: str) -> list[str]:
    """``on_correction: hl7`` must name an HL7 (mllp or http) destination of engine.yaml."""
    kinds = {d.name: d for d in engine.destinations}
    if name not in kinds:
        return [f"{where}: no destination named {name!r} in engine.yaml ({did_you_mean(name, list(kinds))})"]
    if isinstance(kinds[name], DicomDestinationConfig):
        return [f"{where}: {name!r} is a DICOM destination; the correction ADT is HL7 (name an mllp or http"
                " destination)"]
    return []
