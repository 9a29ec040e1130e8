"""Reading a config file's YAML with bounds, before anything walks the document.

Why: YAML anchors and aliases let a 2 KB file describe a document of billions of nodes
(the "billion laughs" alias bomb); PyYAML composes it as a small graph of shared nodes,
and the first code that walks it as a tree (environment expansion, validation) expands
it in full, for minutes and gigabytes. Deeply nested input overflows PyYAML's recursive
composer with a ``RecursionError``. So the loader here

* reads at most :data:`MAX_BYTES` and accepts UTF-8 only,
* stops composing past :data:`MAX_DEPTH` levels of nesting,
* counts the nodes the document has *once aliases are expanded* (linear in the size of
  the node graph, nothing is expanded) and refuses more than :data:`MAX_NODES`, and
  refuses an alias that refers to a node containing itself,
* refuses duplicate keys in a mapping (PyYAML keeps the last one silently; a duplicated
  ``share:`` would hide the value the user sees first).

Aliases within those bounds keep working (``<<: *defaults`` merges included). Every
refusal is a :class:`ConfigYamlError` with one line: the file, the line, what, and what
to do.
"""

from __future__ import annotations

import pathlib
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

#: A config is a few KB; a megabyte is far beyond any real one.
MAX_BYTES = 1024 * 1024
#: Levels of nesting (mappings and lists); real configs use fewer than ten.
MAX_DEPTH = 64
#: Nodes (scalars, lists, mappings) of the document with every alias expanded.
MAX_NODES = 100_000

_MERGE_TAG = "tag:yaml.org,2002:merge"


class ConfigYamlError(ValueError):
    """The file cannot be read as a bounded YAML document; the message is one line."""


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader with a nesting limit and duplicate-key refusal."""

    def __init__(self, text: str, name: str) -> None:
        super().__init__(text)
        self.name = name
        self._depth = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise ConfigYamlError(f"{self.name}: line {mark.line + 1}: nested deeper than "
                                      f"{MAX_DEPTH} levels; a config is a few levels deep")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[tuple[str, str], int] = {}
        for key_node, _ in node.value:
            if isinstance(key_node, ScalarNode) and key_node.tag != _MERGE_TAG:
                key = (key_node.tag, key_node.value)
                if key in seen:
                    raise ConfigYamlError(
                        f"{self.name}: line {key_node.start_mark.line + 1}: key "
                        f"{key_node.value!r} appears twice in one mapping (first on line "
                        f"{seen[key]}); keep one")
                seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def _expanded_size(root: Node, name: str) -> int:
    """Nodes of the document with aliases expanded, counted without expanding: each
    distinct node's size once (memoised), a shared node counted as often as it is used.
    Stops as soon as the count passes :data:`MAX_NODES`."""
    sizes: dict[int, int] = {}
    visiting: set[int] = set()
    # Iterative post-order walk: a document may be deep (up to MAX_DEPTH) and wide.
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if children_done:
            children = _children(node)
            size = 1 + sum(sizes[id(child)] for child in children)
            visiting.discard(key)
            if size > MAX_NODES:
                raise ConfigYamlError(
                    f"{name}: line {node.start_mark.line + 1}: the document expands to more "
                    f"than {MAX_NODES:,} values through its aliases (*name); write the "
                    "values out or use fewer aliases")
            sizes[key] = size
            continue
        if key in sizes:
            continue
        if key in visiting:
            raise ConfigYamlError(f"{name}: line {node.start_mark.line + 1}: an alias refers "
                                  "to a node that contains it; remove the cycle")
        visiting.add(key)
        stack.append((node, True))
        for child in _children(node):
            if id(child) in visiting:
                raise ConfigYamlError(
                    f"{name}: line {child.start_mark.line + 1}: an alias refers to a node "
                    "that contains it; remove the cycle")
            if id(child) not in sizes:
                stack.append((child, False))
    return sizes[id(root)]


def _children(node: Node) -> list[Node]:
    if isinstance(node, SequenceNode):
        return list(node.value)
    if isinstance(node, MappingNode):
        return [item for pair in node.value for item in pair]
    return []


def read_yaml(path: str | pathlib.Path) -> Any:
    """The YAML document in ``path`` as plain Python values, within the module's bounds.

    Raises :class:`ConfigYamlError` (one line) for a file that cannot be read, is not
    UTF-8, is too large, is not YAML, or breaks a bound; ``OSError`` never escapes."""
    name = str(path)
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_BYTES + 1)
    except OSError as error:
        raise ConfigYamlError(f"{name}: cannot read ({error.strerror or error})") from None
    if len(data) > MAX_BYTES:
        raise ConfigYamlError(f"{name}: larger than {MAX_BYTES // 1024} KiB; a config is a "
                              "few KB, is this the right file?")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[:error.start].count(b"\n") + 1
        raise ConfigYamlError(f"{name}: line {line}: not UTF-8 (byte "
                              f"0x{data[error.start]:02x} at offset {error.start}); save "
                              "the file as UTF-8") from None
    return parse_yaml(text, name)


def parse_yaml(text: str, name: str = "config") -> Any:
    """Parse YAML ``text`` within the module's bounds (see :func:`read_yaml`)."""
    loader = _BoundedLoader(text, name)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _expanded_size(node, name)
        return loader.construct_document(node)
    except ConfigYamlError:
        raise
    except yaml.YAMLError as error:
        raise ConfigYamlError(f"{name}: not valid YAML ({_one_line(error)})") from None
    except ValueError as error:  # a scalar PyYAML cannot convert: 5,000 digits, 2001-13-45
        raise ConfigYamlError(f"{name}: a value cannot be read ({' '.join(str(error).split())})"
                              ) from None
    except RecursionError:  # not reached within MAX_DEPTH; kept as a last guard
        raise ConfigYamlError(f"{name}: nested too deeply") from None
    finally:
        loader.dispose()


def _one_line(error: yaml.YAMLError) -> str:
    """PyYAML's multi-line message (with a snippet of the file) as one line."""
    if isinstance(error, yaml.MarkedYAMLError) and error.problem_mark is not None:
        mark = error.problem_mark
        parts = [error.context, error.problem]
        text = "; ".join(" ".join(p.split()) for p in parts if p)
        return f"line {mark.line + 1}, column {mark.column + 1}: {text}"
    return " ".join(str(error).split())
