"""Coercions remembered: the images of one series are coerced alike.

The images a modality sends for one order carry the same values where the order's
differ (patient name and ID, accession, request attributes...), so their coercions
write the same elements and record the same previous values. For each coercion of a
header, :func:`~engine.reconcile.coerce.coerce_header` and the encoding of what it
wrote (:func:`~engine.reconcile.rewrite.encoded_elements`) cost ~0.8 ms of pydicom
element and dataset work. :class:`CoercionMemo` keeps their result: the encoded
elements, with the new OriginalAttributesSequence item's AttributeModificationDateTime
left as a hole, which the next header with the same inputs gets filled with its own time.

The inputs of a coercion, all in the key of what is remembered:

* the mapped values (the ``target`` object itself: :class:`~engine.domain.reconciler.Reconciler`
  hands out one object per version of the order's rows; the entry holds it, so its
  identity cannot be reused while the entry lives);
* the header's bytes, as received, of every element the coercion can read or write:
  each mapped keyword's, SpecificCharacterSet's and OriginalAttributesSequence's
  (absent ones as None);
* the transfer syntax's encoding, and who changes what why (ModifyingSystem,
  SourceOfPreviousValues, reason).

Not remembered: a coercion of an attribute whose VR depends on another element (US or SS...),
a coercion that changed the header's character set (every text value
of the header is re-encoded then), one whose modification time does not occur exactly
once in its OriginalAttributesSequence element or has an odd length (padding).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from engine.reconcile.coerce import (
    ORIGINAL_ATTRIBUTES_SEQUENCE,
    SPECIFIC_CHARACTER_SET,
    Coercion,
    Modification,
    definition,
    stamp_text,
)
from engine.reconcile.rewrite import Header

__all__ = ["CoercionMemo", "Recalled"]

#: Entries kept (least recently used dropped first): a few per series being received.
ENTRIES = 256


@dataclass(frozen=True, slots=True)
class Recalled:
    """A remembered coercion, for a header with the same inputs: what it changed, the encoded top-level
    elements to splice in (the OriginalAttributesSequence with this header's modification time), and what
    the caller remembered with it."""

    changed: tuple[str, ...]
    elements: dict[int, bytes]
    extra: Any


@dataclass(frozen=True, slots=True)
class _Entry:
    target: Mapping[str, Any]  # held: its identity is part of the key
    changed: tuple[str, ...]
    elements: dict[int, bytes]  # every written element but OriginalAttributesSequence
    history: tuple[bytes, bytes] | None  # OriginalAttributesSequence's bytes before and after the time
    stamp_length: int
    extra: Any


class CoercionMemo:
    """The last :data:`ENTRIES` coercions (thread-safe: the associations of a process share it)."""

    def __init__(self, entries: int = ENTRIES) -> None:
        self._entries: OrderedDict[Hashable, _Entry] = OrderedDict()
        self._size = entries
        self._lock = threading.Lock()

    def key(self, header: Header, spans: list[tuple[int, int, int]], target: Mapping[str, Any],
            mod: Modification) -> Hashable | None:
        """What a coercion of ``header`` (its top-level elements at ``spans``) to ``target`` by ``mod``
        depends on, ``mod.when`` aside; None when that is more (an attribute whose VR depends on another
        element, such as US or SS on PixelRepresentation): then nothing is remembered."""
        found_definitions = [definition(keyword) for keyword in target]
        if any(" or " in vr for _, vr in found_definitions):
            return None
        tags = {tag for tag, _ in found_definitions}
        tags.update((SPECIFIC_CHARACTER_SET, ORIGINAL_ATTRIBUTES_SEQUENCE))
        raw = header.raw
        found = {tag: raw[start:stop] for tag, start, stop in spans if tag in tags}
        return (id(target), header.enc, mod.modifying_system, mod.source_of_previous_values, mod.reason,
                tuple((tag, found.get(tag)) for tag in sorted(tags)))

    def recall(self, key: Hashable | None, target: Mapping[str, Any], when: datetime) -> Recalled | None:
        """The coercion remembered under ``key``, its modification time ``when``; None if there is none."""
        if key is None:
            return None
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry.target is not target:
                return None
            self._entries.move_to_end(key)
        if entry.history is None:  # the header held every mapped value already
            return Recalled((), {}, entry.extra)
        stamp = stamp_text(when).encode("ascii")
        if len(stamp) != entry.stamp_length:
            return None
        before, after = entry.history
        return Recalled(entry.changed, {**entry.elements, ORIGINAL_ATTRIBUTES_SEQUENCE: before + stamp + after},
                        entry.extra)

    def remember(self, key: Hashable | None, target: Mapping[str, Any], coercion: Coercion,
                 elements: dict[int, bytes], when: datetime, extra: Any = None) -> bool:
        """Keep ``coercion`` (``elements``: what :func:`~engine.reconcile.rewrite.encoded_elements` gave for
        its tags; none when it changed nothing) under ``key``; False when it cannot be replayed (see the module
        docstring)."""
        if key is None:
            return False
        if not coercion.changed:
            entry = _Entry(target, (), {}, None, 0, extra)
        else:
            history = elements.get(ORIGINAL_ATTRIBUTES_SEQUENCE)
            stamp = stamp_text(when).encode("ascii")
            if coercion.charset_changed or history is None or len(stamp) % 2 or history.count(stamp) != 1:
                return False
            before, _, after = history.partition(stamp)
            rest = {tag: data for tag, data in elements.items() if tag != ORIGINAL_ATTRIBUTES_SEQUENCE}
            entry = _Entry(target, coercion.changed, rest, (before, after), len(stamp), extra)
        with self._lock:
            self._entries[key] = entry
            self._entries.move_to_end(key)
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)
        return True
