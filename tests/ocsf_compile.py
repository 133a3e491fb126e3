"""Compile OCSF schema source (the ocsf/ocsf-schema repository layout) into the export JSON.

The export is the shape ``ocsf_json_schema`` reads (``dictionary``, ``classes``, ``objects``,
``version``; the OCSF server's ``/export/schema``): every class and object with its attributes
resolved — ``extends`` chains merged parent first, ``$include`` of profiles (attributes then
carry ``profiles: [name]``) and includes, dictionary entries filled in, object-typed
attributes as ``object_t`` + ``object_type``, ``class_uid``/``category_uid``/``type_uid``
enums as the server derives them, and the ``observable.type_id`` enum built from the
``observable`` markers across the whole source (dictionary attributes and types first, then
objects and their attributes, then event class attributes; the first definition of an id wins),
as the OCSF server and ocsf-lib compile it. Only the classes asked for and the objects they
reach are written. Used once to produce ``tests/fixtures/ocsf-1.9.0/schema.json`` (see its
README)::

    python -m tests.ocsf_compile SRC_DIR OUT.json base_event detection_finding authentication ...
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from typing import Any

JSON = dict[str, Any]


def _merge(base: JSON, over: JSON) -> JSON:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


class Compiler:
    """Resolves classes and objects of one schema source tree."""

    def __init__(self, src: Path):
        self.src = src
        self.dictionary: JSON = json.loads((src / "dictionary.json").read_text())
        self.categories: JSON = json.loads((src / "categories.json").read_text())["attributes"]
        self.events = {d["name"]: d for d in self._load_all(src / "events")}
        self.objects = {d["name"]: d for d in self._load_all(src / "objects")}

    @staticmethod
    def _load_all(root: Path) -> list[JSON]:
        return [json.loads(p.read_text()) for p in sorted(root.rglob("*.json"))]

    def _attributes(self, raw: JSON) -> JSON:
        """Own attributes of a class/object with ``$include`` files merged in."""
        attrs: JSON = {}
        for inc in raw.get("$include", []) if isinstance(raw.get("$include"), list) else []:
            doc = json.loads((self.src / inc).read_text())
            profile = doc.get("name") if inc.startswith("profiles/") else None
            for name, spec in self._attributes(doc.get("attributes", {})).items():
                spec = dict(spec)
                if profile is not None and "profile" not in spec:
                    spec["profile"] = profile
                attrs[name] = _merge(attrs.get(name, {}), spec)
        for name, spec in raw.items():
            if name != "$include":
                attrs[name] = _merge(attrs.get(name, {}), spec)
        return attrs

    def _chain(self, table: dict[str, JSON], name: str) -> list[JSON]:
        chain = [table[name]]
        while chain[-1].get("extends"):
            chain.append(table[chain[-1]["extends"]])
        return chain[::-1]

    def _resolve(self, table: dict[str, JSON], name: str) -> JSON:
        merged: JSON = {}
        attrs: JSON = {}
        for part in self._chain(table, name):
            attrs = _merge(attrs, self._attributes(part.get("attributes", {})))
            merged = _merge(merged, {k: v for k, v in part.items() if k != "attributes"})
        merged["name"] = name
        merged["attributes"] = {}
        for attr, spec in attrs.items():
            full = _merge(self.dictionary["attributes"].get(attr, {}), spec)
            full.setdefault("requirement", "optional")
            profile = full.pop("profile", None)
            if profile:
                full["profiles"] = [profile]
            kind = full.get("type", "")
            if kind and not kind.endswith("_t"):
                full["object_type"], full["type"] = kind, "object_t"
            merged["attributes"][attr] = full
        return merged

    def resolve_class(self, name: str) -> JSON:
        """A class with the uid/enum attributes the OCSF server derives."""
        cls = self._resolve(self.events, name)
        category = self.categories.get(cls.get("category", ""), {"uid": 0, "caption": "Uncategorized"})
        uid = category["uid"] * 1000 + int(cls.get("uid", 0)) if name != "base_event" else 0
        cls.update(uid=uid, category_uid=category["uid"], category_name=category.get("caption"))
        attrs = cls["attributes"]
        attrs["class_uid"]["enum"] = {str(uid): {"caption": cls["caption"]}}
        attrs["category_uid"]["enum"] = {str(category["uid"]): {"caption": category.get("caption")}}
        activities = attrs["activity_id"].get("enum", {})
        attrs["type_uid"]["enum"] = {
            str(uid * 100 + int(a)): {"caption": f"{cls['caption']}: {v.get('caption')}"} for a, v in activities.items()
        }
        return cls

    def _first_marked(self, table: dict[str, JSON], name: str, attr: str | None) -> JSON:
        """The ancestor (root first) of ``name`` that introduced the observable marker."""
        for part in self._chain(table, name):
            spec = part if attr is None else part.get("attributes", {}).get(attr)
            if isinstance(spec, dict) and "observable" in spec:
                return part
        return table[name]

    def observable_types(self) -> JSON:
        """The ``observable.type_id`` enum: every observable id the source defines, with its caption."""
        enum: JSON = {}

        def add(ident: Any, caption: str) -> None:
            enum.setdefault(str(ident), {"caption": caption})

        for attrs in (self.dictionary["attributes"], self.dictionary["types"]["attributes"]):
            for spec in attrs.values():
                if "observable" in spec:
                    add(spec["observable"], spec["caption"])
        for table, label in ((self.objects, "Object"), (self.events, "Event")):
            for name in sorted(table):
                raw = table[name]
                if label == "Object" and "observable" in raw:
                    base = self._first_marked(table, name, None)
                    add(base["observable"], base["caption"])
                for attr, spec in sorted(raw.get("attributes", {}).items()):
                    if isinstance(spec, dict) and "observable" in spec:
                        base = self._first_marked(table, name, attr)
                        add(spec["observable"], f"{base['caption']} {label}: {attr}")
        return dict(sorted(enum.items(), key=lambda kv: int(kv[0])))

    def export(self, class_names: list[str]) -> JSON:
        """The export document: the classes asked for and every object they reach."""
        classes = {n: self.resolve_class(n) for n in class_names}
        objects: JSON = {}
        todo = [a["object_type"] for c in classes.values() for a in c["attributes"].values() if "object_type" in a]
        while todo:
            name = todo.pop()
            if name in objects:
                continue
            objects[name] = obj = self._resolve(self.objects, name)
            todo += [a["object_type"] for a in obj["attributes"].values() if "object_type" in a]
        if "observable" in objects:  # its own 0 Unknown and 99 Other, then every id the source marks
            type_id = objects["observable"]["attributes"]["type_id"]
            derived = {k: v for k, v in self.observable_types().items() if k not in type_id["enum"]}
            type_id["enum"] = {**type_id["enum"], **derived}
        version = json.loads((self.src / "version.json").read_text())["version"]
        return {"version": version, "dictionary": {"types": self.dictionary["types"]}, "classes": classes,
                "objects": objects}  # fmt: skip


if __name__ == "__main__":  # pragma: no cover
    src, out, *names = sys.argv[1:]
    doc = Compiler(Path(src)).export(names)
    Path(out).write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
