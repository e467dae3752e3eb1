"""The declarative definition file (YAML or JSON): lists of entities, sources, views, etc."""

from __future__ import annotations

from typing import Any

import yaml

from mlp_core.errors import InvalidArgument

#: File section → registry kind.
SECTIONS = {
    "entities": "entity",
    "data_sources": "data_source",
    "feature_views": "feature_view",
    "transformations": "transformation",
    "feature_services": "feature_service",
}


def parse_definitions(text: str | bytes) -> list[tuple[str, dict[str, Any]]]:
    """(kind, spec) pairs from a YAML document with the sections of ``SECTIONS``."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InvalidArgument(f"the definition file is not valid YAML: {exc}") from None
    return sections_to_items(doc)


def sections_to_items(doc: Any) -> list[tuple[str, dict[str, Any]]]:
    """(kind, spec) pairs from an already-parsed document."""
    if not isinstance(doc, dict):
        raise InvalidArgument(f"the definition file must be a mapping with sections {sorted(SECTIONS)}")
    unknown = sorted(set(doc) - set(SECTIONS))
    if unknown:
        raise InvalidArgument(f"unknown section(s) {unknown}; use {sorted(SECTIONS)}")
    items: list[tuple[str, dict[str, Any]]] = []
    for section, kind in SECTIONS.items():
        entries = doc.get(section) or []
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise InvalidArgument(f"section '{section}' must be a list of mappings")
        items += [(kind, e) for e in entries]
    if not items:
        raise InvalidArgument("the definition file defines nothing")
    return items
