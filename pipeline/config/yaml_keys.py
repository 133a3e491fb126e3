"""Repeated keys in a YAML document: YAML requires a mapping's keys to be unique, PyYAML does not check.

One function, :func:`repeated_key`, on the composed node tree (before construction), used by the
config loader and the rule-file loader; it imports nothing of the project.
"""

from __future__ import annotations

import yaml


def repeated_key(root: yaml.Node) -> str | None:
    """Where a key repeats in one mapping, as ``line L, column C: key 'k' repeated (first at line F); …``
    (``None``: every mapping's keys are unique). YAML requires unique keys (YAML 1.2, 3.2.1.1); PyYAML
    keeps the last one silently, so a second ``sinks:`` pasted below the first would drop the first."""
    seen_nodes: set[int] = set()
    stack = [root]
    while stack:
        node = stack.pop()
        if id(node) in seen_nodes:
            continue
        seen_nodes.add(id(node))
        if isinstance(node, yaml.MappingNode):
            first: dict[str, yaml.Node] = {}
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
                    if key.value in first:
                        at, was = key.start_mark, first[key.value].start_mark
                        return (
                            f"line {at.line + 1}, column {at.column + 1}: key {key.value[:80]!r} repeated "
                            f"(first at line {was.line + 1}); the later one would silently replace it: merge them"
                        )
                    first[key.value] = key
                stack += [key, value]
        elif isinstance(node, yaml.SequenceNode):
            stack += node.value
    return None
