"""The condition language: text to a syntax tree, with column positions.

    condition  := or
    or         := and ("or" and)*
    and        := not ("and" not)*
    not        := "not" not | primary
    primary    := "(" condition ")" | macro_name | bool_field | field op value | field "exists"
    value      := "quoted string" | bare_word | "(" value ("," value)* ")"

Tokens are read on demand, because a value may hold characters that are
operators elsewhere (`proc.args contains --donate-level=0`): after an
operator, a bare word runs to the next space, parenthesis or comma.

The parser checks syntax and field names. Values, list and macro names are
checked by the compiler once every file is loaded, since a later file may
define the list a condition names.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

from . import fields as F

COMPARISONS = ("=", "!=", "<", "<=", ">", ">=")
WORD_OPS = ("in", "contains", "icontains", "startswith", "endswith", "glob", "regex", "cidr")
OPERATORS = COMPARISONS + WORD_OPS
KEYWORDS = frozenset(("and", "or", "not", "exists") + WORD_OPS)


@dataclass(frozen=True, slots=True)
class Source:
    """Where a condition's text came from, to turn an offset into file:line and a column."""

    file: str
    line: int  # the file line of the text's first character (1-based)
    text: str
    owner: str  # "rule ssh-remote-forward", "macro ssh_client"
    what: str = "condition"  # "condition", "sequence.steps[1].condition", ...

    def where(self, pos: int | None) -> tuple[int, str]:
        """(file line, " at column N") for an offset into the text."""
        if pos is None:
            return self.line, ""
        pos = max(0, min(pos, len(self.text)))
        line = self.line + self.text.count("\n", 0, pos)
        col = pos - (self.text.rfind("\n", 0, pos) + 1) + 1
        return line, f" at column {col}"


class ConditionError(Exception):
    """A problem at an offset of a condition (or, with no source, at its item)."""

    def __init__(self, message: str, pos: int | None = None, src: Source | None = None):
        super().__init__(message)
        self.message = message
        self.pos = pos
        self.src = src


# --------------------------------------------------------------------------
# Syntax tree. Nodes that can fail in the compiler carry their source.


@dataclass(slots=True)
class Value:
    text: str
    pos: int
    quoted: bool  # a quoted string is never read as a list name
    in_parens: bool = False


@dataclass(slots=True)
class Compare:
    field: F.Field
    op: str
    values: list[Value]
    listy: bool  # written as "(a, b, ...)"
    pos: int  # of the field
    op_pos: int
    src: Source


@dataclass(slots=True)
class Exists:
    field: F.Field


@dataclass(slots=True)
class BoolTest:
    field: F.Field


@dataclass(slots=True)
class MacroRef:
    name: str
    pos: int
    src: Source


@dataclass(slots=True)
class Not:
    operand: object


@dataclass(slots=True)
class And:
    items: list


@dataclass(slots=True)
class Or:
    items: list


# --------------------------------------------------------------------------
# Scanner and parser.

_WS = re.compile(r"\s*")
_WORD = re.compile(r"[^\s()\"',=!<>]+")
_VALUE_WORD = re.compile(r"[^\s(),]+")
_OP = re.compile(r"!=|<=|>=|=|<|>")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*$")


def _suggest(name: str) -> str:
    close = difflib.get_close_matches(name, F.names(), n=1, cutoff=0.75)
    return f" (did you mean '{close[0]}'?)" if close else ""


class _Parser:
    def __init__(self, src: Source):
        self.src = src
        self.text = src.text
        self.pos = 0

    def fail(self, message: str, pos: int | None = None) -> "NoReturn":  # noqa: F821
        raise ConditionError(message, self.pos if pos is None else pos, self.src)

    def skip(self) -> None:
        self.pos = _WS.match(self.text, self.pos).end()

    def at_end(self) -> bool:
        self.skip()
        return self.pos >= len(self.text)

    def peek_char(self) -> str:
        self.skip()
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def peek_word(self) -> str | None:
        self.skip()
        m = _WORD.match(self.text, self.pos)
        return m.group(0) if m else None

    def take_word(self) -> tuple[str, int]:
        self.skip()
        m = _WORD.match(self.text, self.pos)
        start = self.pos
        self.pos = m.end()
        return m.group(0), start

    def peek_op(self) -> str | None:
        """A comparison symbol or operator keyword next, without taking it."""
        self.skip()
        m = _OP.match(self.text, self.pos)
        if m:
            return m.group(0)
        w = self.peek_word()
        if w in WORD_OPS or w == "exists":
            return w
        return None

    def describe_next(self) -> str:
        self.skip()
        if self.pos >= len(self.text):
            return "the end"
        m = _WORD.match(self.text, self.pos)
        return f"'{m.group(0)}'" if m else f"'{self.text[self.pos]}'"

    # condition := or
    def parse(self):
        if self.at_end():
            self.fail("missing condition", 0)
        node = self.parse_or()
        if not self.at_end():
            if self.peek_char() == ")":
                self.fail("unbalanced parenthesis: ')' has no matching '('")
            self.fail(f"unexpected {self.describe_next()} (expected and, or, or the end)")
        return node

    def parse_or(self):
        items = [self.parse_and()]
        while self.peek_word() == "or":
            self.take_word()
            items.append(self.parse_and())
        return items[0] if len(items) == 1 else Or(items)

    def parse_and(self):
        items = [self.parse_not()]
        while self.peek_word() == "and":
            self.take_word()
            items.append(self.parse_not())
        return items[0] if len(items) == 1 else And(items)

    def parse_not(self):
        if self.peek_word() == "not":
            self.take_word()
            return Not(self.parse_not())
        return self.parse_primary()

    def parse_primary(self):
        c = self.peek_char()
        if c == "(":
            open_pos = self.pos
            self.pos += 1
            if self.peek_char() == ")":
                self.fail("empty parentheses")
            node = self.parse_or()
            if self.peek_char() != ")":
                if self.at_end():
                    self.fail("unbalanced parenthesis: '(' is not closed", open_pos)
                self.fail(f"unexpected {self.describe_next()} (expected and, or or ')')")
            self.pos += 1
            return node
        if c == ")":
            self.fail("unbalanced parenthesis: ')' has no matching '('")
        if c == "":
            self.fail("condition ends early: expected a field, a macro or '('")
        if c in "\"'":
            self.fail("expected a field, a macro or '(', not a quoted string")
        word = self.peek_word()
        if word is None:
            self.fail(f"unexpected '{c}' (expected a field, a macro or '(')")
        if word in KEYWORDS:
            self.fail(f"expected a field, a macro or '(', not '{word}'")
        name, start = self.take_word()
        op = self.peek_op()
        fld = F.field(name)
        if op is not None:
            if fld is None:
                self.fail(f"unknown field '{name}'{_suggest(name)}", start)
            return self.parse_comparison(fld, start, op)
        if fld is not None:
            if fld.type == F.BOOL:
                return BoolTest(fld)
            self.fail(f"field '{name}' needs an operator ({', '.join(OPERATORS)} or exists)", start)
        if "." in name:
            self.fail(f"unknown field '{name}'{_suggest(name)}", start)
        if not _NAME.match(name):
            self.fail(f"'{name}' is not a field or a macro name", start)
        return MacroRef(name, start, self.src)

    def parse_comparison(self, fld: F.Field, start: int, op: str):
        self.skip()
        op_pos = self.pos
        self.pos += len(op)
        if op == "exists":
            return Exists(fld)
        self.skip()
        if self.pos < len(self.text) and self.text[self.pos] == "(":
            open_pos = self.pos
            self.pos += 1
            values = []
            while True:
                if self.peek_char() == ")" and not values:
                    self.fail("empty list of values")
                values.append(self.parse_value(in_parens=True))
                c = self.peek_char()
                if c == ",":
                    self.pos += 1
                elif c == ")":
                    self.pos += 1
                    break
                elif c == "":
                    self.fail("unbalanced parenthesis: '(' is not closed", open_pos)
                else:
                    self.fail(f"unexpected {self.describe_next()} in a list of values (expected ',' or ')')")
            return Compare(fld, op, values, True, start, op_pos, self.src)
        return Compare(fld, op, [self.parse_value(in_parens=False)], False, start, op_pos, self.src)

    def parse_value(self, in_parens: bool) -> Value:
        self.skip()
        start = self.pos
        if start >= len(self.text):
            self.fail("condition ends early: expected a value")
        quote = self.text[start]
        if quote in "\"'":
            out = []
            i = start + 1
            while i < len(self.text):
                ch = self.text[i]
                if ch == "\\" and i + 1 < len(self.text) and self.text[i + 1] in (quote, "\\"):
                    out.append(self.text[i + 1])
                    i += 2
                    continue
                if ch == quote:
                    self.pos = i + 1
                    return Value("".join(out), start, True, in_parens)
                out.append(ch)
                i += 1
            self.fail("unterminated string", start)
        m = _VALUE_WORD.match(self.text, start)
        if not m:
            self.fail(f"expected a value, not '{self.text[start]}'")
        word = m.group(0)
        if word in ("and", "or", "not") and not in_parens:
            self.fail(f"expected a value, not '{word}'")
        self.pos = m.end()
        return Value(word, start, False, in_parens)


def parse(src: Source):
    """The syntax tree of a condition, or ConditionError with its offset."""
    try:
        return _Parser(src).parse()
    except RecursionError:
        raise ConditionError("condition nests too deep", 0, src) from None


def parse_append(src: Source):
    """An appended condition ("and ..." or "or ..."): (operator, tree)."""
    p = _Parser(src)
    word = p.peek_word()
    if word not in ("and", "or"):
        p.fail("an appended condition starts with 'and' or 'or'", p.pos)
    p.take_word()
    if p.at_end():
        p.fail("condition ends early after '" + word + "'")
    node = p.parse_or()
    if not p.at_end():
        if p.peek_char() == ")":
            p.fail("unbalanced parenthesis: ')' has no matching '('")
        p.fail(f"unexpected {p.describe_next()} (expected and, or, or the end)")
    return word, node


def macro_refs(node) -> list[MacroRef]:
    """The macros a tree names, in order."""
    out: list[MacroRef] = []

    def walk(n):
        if isinstance(n, MacroRef):
            out.append(n)
        elif isinstance(n, (And, Or)):
            for i in n.items:
                walk(i)
        elif isinstance(n, Not):
            walk(n.operand)

    walk(node)
    return out
