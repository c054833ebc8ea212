"""YAML documents that remember where each value came from, and error lists that say so.

Config and policy loaders both read YAML through `load_yaml` so that every error can
name the file, line, key, bad value and what was expected, and report all at once:

    problems = Problems("policy.yaml")
    doc = load_yaml(text, problems)
    if isinstance(doc, YamlMap):
        line = doc.line_of("routes")
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml


class YamlMap(dict[str, Any]):
    """A mapping whose keys remember their line (1-based)."""

    line: int = 0
    key_lines: dict[str, int]

    def line_of(self, key: str) -> int:
        return self.key_lines.get(key, self.line)


class YamlList(list[Any]):
    """A sequence whose items remember their line (1-based)."""

    line: int = 0
    item_lines: list[int]

    def line_of(self, index: int) -> int:
        return self.item_lines[index] if 0 <= index < len(self.item_lines) else self.line


@dataclass(frozen=True)
class Problem:
    file: str
    line: int
    key: str
    value: str
    expected: str

    def __str__(self) -> str:
        shown = f" (got {self.value})" if self.value else ""
        return f"{self.file}:{self.line}: {self.key}: {self.expected}{shown}"


@dataclass
class Problems:
    """Collects every error of one load; the loader raises once, at the end, with all."""

    file: str
    items: list[Problem] = field(default_factory=list)

    def add(self, line: int, key: str, value: object, expected: str) -> None:
        self.items.append(Problem(self.file, line, key, _show(value), expected))

    def __bool__(self) -> bool:
        return bool(self.items)

    def __str__(self) -> str:
        return "\n".join(str(p) for p in self.items)


MAX_DOCUMENT_BYTES = 4 * 1024 * 1024


def _show(value: object) -> str:
    if value is None or value == "":
        return ""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


class _Loader(yaml.SafeLoader):
    """SafeLoader that builds YamlMap/YamlList and refuses duplicate keys and aliases."""


def _construct_map(loader: _Loader, node: yaml.MappingNode) -> YamlMap:
    result = YamlMap()
    result.line = node.start_mark.line + 1
    result.key_lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, str):
            raise yaml.constructor.ConstructorError(
                None, None, f"keys must be strings, got {key!r}", key_node.start_mark
            )
        if key in result:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        result[key] = loader.construct_object(value_node, deep=True)
        result.key_lines[key] = key_node.start_mark.line + 1
    return result


def _construct_list(loader: _Loader, node: yaml.SequenceNode) -> YamlList:
    result = YamlList(loader.construct_object(child, deep=True) for child in node.value)
    result.line = node.start_mark.line + 1
    result.item_lines = [child.start_mark.line + 1 for child in node.value]
    return result


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_map)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_list)


def load_yaml(text: str, problems: Problems) -> object:
    """Parse one YAML document; syntax errors land in `problems` and give None."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_DOCUMENT_BYTES:
        problems.add(1, "(document)", None, f"at most {MAX_DOCUMENT_BYTES} bytes")
        return None
    try:
        loader = _Loader(text)
        try:
            # SECURITY: aliases allow "billion laughs" expansion; configs never need them.
            node = loader.get_single_node()
            if node is not None and _has_alias(node):
                problems.add(1, "(document)", None, "no YAML anchors or aliases")
                return None
            return loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        problems.add(line, "(syntax)", None, f"valid YAML: {exc.problem or exc.context}")
    except yaml.YAMLError as exc:
        problems.add(1, "(syntax)", None, f"valid YAML: {exc}")
    except RecursionError:
        # The parser recurses per nesting level; a hostile file must not escape as a crash.
        problems.add(1, "(document)", None, "YAML nested less deeply")
    return None


def _has_alias(root: yaml.Node) -> bool:
    seen: set[int] = set()
    stack: list[yaml.Node] = [root]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            return True
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                stack.extend((key, value))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)
    return False
