"""A small JSON Schema validator for the subset `mlopt/report.schema.json` uses: type, const, enum, properties,
required, additionalProperties, items, minimum, oneOf, allOf and local $ref. The project has no jsonschema
dependency; this keeps the schema test self-contained. `errors(doc, schema)` lists what does not fit; `SCHEMA` is
mlopt's report schema."""

import json
import os

with open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "mlopt", "report.schema.json")) as _f:
    SCHEMA = json.load(_f)

TYPES = {
    "object": dict, "array": list, "string": str, "boolean": bool, "null": type(None),
    "integer": int, "number": (int, float),
}


def _is(value, name):
    if name in ("integer", "number") and isinstance(value, bool):
        return False
    return isinstance(value, TYPES[name])


def errors(doc, schema, root=None, where="$"):
    root = root or schema
    if "$ref" in schema:
        target = root
        for part in schema["$ref"].lstrip("#/").split("/"):
            target = target[part]
        return errors(doc, target, root, where)
    found = []
    types = schema.get("type")
    if types is not None and not any(_is(doc, t) for t in ([types] if isinstance(types, str) else types)):
        return [f"{where}: {doc!r} is not of type {types}"]
    if "const" in schema and doc != schema["const"]:
        found.append(f"{where}: {doc!r} is not {schema['const']!r}")
    if "enum" in schema and doc not in schema["enum"]:
        found.append(f"{where}: {doc!r} is not one of {schema['enum']}")
    if "minimum" in schema and _is(doc, "number") and doc < schema["minimum"]:
        found.append(f"{where}: {doc} < {schema['minimum']}")
    for sub in schema.get("allOf", []):
        found += errors(doc, sub, root, where)
    if "oneOf" in schema:
        fits = [not errors(doc, sub, root, where) for sub in schema["oneOf"]]
        if sum(fits) != 1:
            found.append(f"{where}: fits {sum(fits)} of the oneOf alternatives, not exactly 1")
    if isinstance(doc, dict):
        properties = schema.get("properties", {})
        found += [f"{where}: '{key}' is missing" for key in schema.get("required", []) if key not in doc]
        for key, value in doc.items():
            if key in properties:
                found += errors(value, properties[key], root, f"{where}.{key}")
            elif schema.get("additionalProperties") is False:
                found.append(f"{where}: unexpected '{key}'")
            elif isinstance(schema.get("additionalProperties"), dict):
                found += errors(value, schema["additionalProperties"], root, f"{where}.{key}")
    if isinstance(doc, list) and "items" in schema:
        for k, item in enumerate(doc):
            found += errors(item, schema["items"], root, f"{where}[{k}]")
    return found
