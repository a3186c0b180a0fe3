"""The shape of a JSON answer: field names and JSON types, recursively, never a value.

A shape is what a user can attach to a bug report: it says how the service answered without
one email, phone, name or id of the account in it. Lists are described by one element shape,
the merge of all their elements; object keys that are data rather than field names (contact
ids keying Reply's ``notProcessed``, emails, uuids) are folded into one ``<key>`` entry.
"""

from __future__ import annotations

import re
from typing import Any

Shape = dict[str, Any]

#: Keys that read as a field name; anything else (digits, ``@``, ``+``, ``-``) is data.
_FIELD_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
DATA_KEY = "<key>"


def json_type(value: Any) -> str:
    """The JSON type of a parsed value, with integer and number told apart."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def shape_of(value: Any) -> Shape:
    """The shape of one parsed JSON value."""
    kind = json_type(value)
    shape: Shape = {"type": [kind]}
    if isinstance(value, dict):
        fields: dict[str, Shape] = {}
        for key, inner in value.items():
            name = str(key) if _FIELD_NAME.match(str(key)) else DATA_KEY
            fields[name] = merge(fields[name], shape_of(inner)) if name in fields else shape_of(inner)
        shape["fields"] = fields
    elif isinstance(value, list):
        items: Shape | None = None
        for inner in value:
            items = shape_of(inner) if items is None else merge(items, shape_of(inner))
        if items is not None:
            shape["items"] = items
    return shape


def merge(a: Shape, b: Shape) -> Shape:
    """One shape covering both: types united, fields merged, a field missing from one side
    marked ``optional``."""
    merged: Shape = {"type": sorted(set(a["type"]) | set(b["type"]))}
    if "fields" in a or "fields" in b:
        fa, fb = a.get("fields"), b.get("fields")
        if fa is None or fb is None:
            merged["fields"] = dict(fa or fb or {})
        else:
            fields: dict[str, Shape] = {}
            for name in [*fa, *(n for n in fb if n not in fa)]:
                if name in fa and name in fb:
                    fields[name] = merge(fa[name], fb[name])
                else:
                    fields[name] = {**(fa.get(name) or fb[name]), "optional": True}
            merged["fields"] = fields
    if "items" in a or "items" in b:
        ia, ib = a.get("items"), b.get("items")
        merged["items"] = merge(ia, ib) if ia is not None and ib is not None else (ia or ib)
    if a.get("optional") or b.get("optional"):
        merged["optional"] = True
    return merged
