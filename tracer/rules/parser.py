"""Rules files (YAML) to items that remember their file and line.

yaml.compose gives nodes with start marks; they are turned into plain dicts
and lists (YMap, YList) that also hold the line of each key and item, so
that every later error can name the line it is about.
"""

from __future__ import annotations

from dataclasses import dataclass

import yaml
from yaml.nodes import MappingNode, ScalarNode, SequenceNode

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
# Scalars kept as their text: a time as in records, and a bare `=` (which
# YAML 1.1 resolves to its "value" tag) as Falco users write in `comps: [=]`.
_AS_TEXT = ("tag:yaml.org,2002:timestamp", "tag:yaml.org,2002:value")


class RulesError(Exception):
    """A user's mistake in a rules file: one line, `file:line: what is wrong`."""


@dataclass(frozen=True, slots=True)
class Where:
    file: str
    line: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


class YMap(dict):
    """A mapping with the line of the mapping, of each key and of each value."""

    where: Where
    key_line: dict[str, int]
    value_line: dict[str, int]  # where a value's text starts (the line after `|` for a block scalar)


class YList(list):
    where: Where
    item_line: list[int]
    raw: list[str | None]  # each scalar item as written (`on`, `0755`), for lists of names and values


def _content_line(node) -> int:
    """The 1-based line where a scalar's text begins."""
    line = node.start_mark.line + 1
    if isinstance(node, ScalarNode) and node.style in ("|", ">"):
        line += 1  # a block scalar's text starts below its indicator
    return line


class _Converter:
    def __init__(self, file: str):
        self.file = file
        self.ctor = yaml.constructor.SafeConstructor()

    def convert(self, node):
        if isinstance(node, MappingNode):
            out = YMap()
            out.where = Where(self.file, node.start_mark.line + 1)
            out.key_line, out.value_line = {}, {}
            for knode, vnode in node.value:
                key = self.convert(knode)
                kline = knode.start_mark.line + 1
                if not isinstance(key, str):
                    raise RulesError(f"{self.file}:{kline}: keys must be text, not {key!r}")
                if key in out:
                    raise RulesError(f"{self.file}:{kline}: duplicate key '{key}'")
                out[key] = self.convert(vnode)
                out.key_line[key] = kline
                out.value_line[key] = _content_line(vnode)
            return out
        if isinstance(node, SequenceNode):
            out = YList(self.convert(n) for n in node.value)
            out.where = Where(self.file, node.start_mark.line + 1)
            out.item_line = [n.start_mark.line + 1 for n in node.value]
            out.raw = [n.value if isinstance(n, ScalarNode) else None for n in node.value]
            return out
        if node.tag in _AS_TEXT:
            return node.value
        try:
            return self.ctor.construct_object(node, deep=True)
        except yaml.YAMLError as exc:
            raise RulesError(f"{self.file}:{node.start_mark.line + 1}: YAML: {exc.problem or exc}") from None


def load_document(text: str, file: str) -> tuple[object, int]:
    """A YAML document as YMap / YList / scalars that know their lines, and the line it starts on.

    (None, 1) for an empty document. RulesError (`file:line: YAML: what`) when it is not YAML;
    the rules, policy and daemon config loaders turn that into their own error.
    """
    try:
        root = yaml.compose(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        line = mark.line + 1 if mark is not None else 1
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        if "nesting depth" in problem:
            problem = "nests too deep"  # PyYAML >= 6.0.3 stops there itself; older ones recurse until we do
        raise RulesError(f"{file}:{line}: YAML: {problem}") from None
    if root is None:
        return None, 1
    try:
        return _Converter(file).convert(root), root.start_mark.line + 1
    except RecursionError:
        raise RulesError(f"{file}:{root.start_mark.line + 1}: YAML: nests too deep") from None


def load_items(text: str, file: str) -> YList:
    """The items of a rules file, each a YMap; an empty file has none."""
    items, first_line = load_document(text, file)
    if items is None:
        empty = YList()
        empty.where, empty.item_line, empty.raw = Where(file, 1), [], []
        return empty
    if not isinstance(items, YList):
        raise RulesError(f"{file}:{first_line}: a rules file is a YAML list of items (rule, macro, list)")
    for item, line in zip(items, items.item_line):
        if not isinstance(item, YMap):
            raise RulesError(f"{file}:{line}: an item is a mapping with a rule, macro or list key")
    return items
