"""The query language of ``faceattr search``: boolean expressions over attribute names.

::

    query   := or
    or      := and ("or" and)*
    and     := not ("and" not)*
    not     := "not" not | atom
    atom    := "(" query ")" | NAME [op NUMBER]
    op      := ">" | ">=" | "<" | "<="

A bare ``NAME`` means the attribute is present at the model's threshold for it (as ``predict``
says); ``NAME > 0.9`` compares its probability. Names are case-insensitive. Keywords are
``and``, ``or``, ``not`` (also ``&``, ``|``, ``!``).

Each face matching the query gets a score in [0, 1], its "combined probability", and results
are ranked by it: a name or ``>`` / ``>=`` comparison scores the probability ``p``, ``<`` /
``<=`` scores ``1 - p``, ``not`` is ``1 - score``, ``and`` multiplies, ``or`` takes the larger.

:func:`parse` gives a tree; :func:`to_sql` turns it into a WHERE condition and a score
expression over the columns ``a0 ... aN`` of the index's ``faces`` table.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from faceattr.errors import UsageError, close_matches


@dataclass(frozen=True)
class Attr:
    index: int  # column a<index>
    name: str
    op: str | None = None  # None: present at the threshold
    value: float | None = None


@dataclass(frozen=True)
class Not:
    arg: Node


@dataclass(frozen=True)
class And:
    args: tuple[Node, ...]


@dataclass(frozen=True)
class Or:
    args: tuple[Node, ...]


Node = Attr | Not | And | Or

_TOKEN = re.compile(
    r"\s*(?:(?P<num>\d+(?:\.\d*)?|\.\d+)|(?P<op>>=|<=|>|<)|(?P<par>[()])|(?P<sym>[&|!])"
    r"|(?P<word>[A-Za-z_][A-Za-z0-9_]*))"
)
_SYMBOLS = {"&": "and", "|": "or", "!": "not"}
_KEYWORDS = {"and", "or", "not"}


class QueryError(UsageError):
    """A query that does not parse (exit code 2); the message points at the column."""


def _error(query: str, column: int, what: str, hint: str | None = None) -> QueryError:
    pointer = f"  {query}\n  {' ' * column}^"
    return QueryError(f"Query error at column {column + 1}: {what}\n{pointer}", hint)


_HELP = (
    "Write attribute names joined by and / or / not, with parentheses, e.g. "
    "'Eyeglasses and not Male' or '(Blond_Hair or Gray_Hair) and Smiling > 0.9'."
)


def _tokens(query: str) -> list[tuple[str, str, int]]:
    out, i = [], 0
    while i < len(query):
        if query[i].isspace():
            i += 1
            continue
        m = _TOKEN.match(query, i)
        if m is None or m.end() == i:
            raise _error(query, i, f"unexpected {query[i]!r}.", _HELP)
        kind = m.lastgroup or ""
        text = m.group(kind)
        start = m.start(kind)
        if kind == "sym":
            kind, text = "word", _SYMBOLS[text]
        out.append((kind, text, start))
        i = m.end()
    return out


class _Parser:
    def __init__(self, query: str, attributes: list[str]) -> None:
        self.query = query
        self.tokens = _tokens(query)
        self.pos = 0
        self.by_lower = {a.lower(): i for i, a in enumerate(attributes)}
        self.attributes = attributes

    def peek(self) -> tuple[str, str, int] | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def column(self) -> int:
        tok = self.peek()
        return tok[2] if tok else len(self.query)

    def keyword(self, word: str) -> bool:
        tok = self.peek()
        if tok and tok[0] == "word" and tok[1].lower() == word:
            self.pos += 1
            return True
        return False

    def parse(self) -> Node:
        if not self.tokens:
            raise _error(self.query, 0, "the query is empty.", _HELP)
        node = self.or_()
        if self.peek() is not None:
            raise _error(self.query, self.column(), f"unexpected {self.peek()[1]!r}; "  # type: ignore[index]
                         "expected and, or, or the end of the query.", _HELP)  # fmt: skip
        return node

    def or_(self) -> Node:
        args = [self.and_()]
        while self.keyword("or"):
            args.append(self.and_())
        return args[0] if len(args) == 1 else Or(tuple(args))

    def and_(self) -> Node:
        args = [self.not_()]
        while self.keyword("and"):
            args.append(self.not_())
        return args[0] if len(args) == 1 else And(tuple(args))

    def not_(self) -> Node:
        if self.keyword("not"):
            return Not(self.not_())
        return self.atom()

    def atom(self) -> Node:
        tok = self.peek()
        if tok is None:
            raise _error(self.query, len(self.query), "the query ends too soon; expected an "
                         "attribute name or '('.", _HELP)  # fmt: skip
        kind, text, col = tok
        if kind == "par" and text == "(":
            self.pos += 1
            node = self.or_()
            close = self.peek()
            if close is None or close[1] != ")":
                raise _error(self.query, self.column(), "expected ')'.", _HELP)
            self.pos += 1
            return node
        if kind != "word" or text.lower() in _KEYWORDS:
            raise _error(self.query, col, f"expected an attribute name or '(', got {text!r}.",
                         _HELP)  # fmt: skip
        self.pos += 1
        index = self.by_lower.get(text.lower())
        if index is None:
            near = close_matches(text, self.attributes)
            did = f" Did you mean: {', '.join(near)}?" if near else ""
            raise _error(self.query, col, f"unknown attribute {text!r}.{did}",
                         f"The index's attributes: {', '.join(self.attributes)}")  # fmt: skip
        op = self.peek()
        if op is None or op[0] != "op":
            return Attr(index, self.attributes[index])
        self.pos += 1
        num = self.peek()
        if num is None or num[0] != "num":
            raise _error(
                self.query,
                self.column(),
                f"expected a probability after {op[1]!r}.",
                "Compare with a number between 0 and 1, e.g. 'Smiling > 0.9'.",
            )
        value = float(num[1])
        if not 0.0 <= value <= 1.0:
            raise _error(self.query, num[2], f"{num[1]} is not a probability (0 to 1).")
        self.pos += 1
        return Attr(index, self.attributes[index], op[1], value)


def parse(query: str, attributes: list[str]) -> Node:
    """The tree of ``query``; a :class:`QueryError` (exit 2) pointing at the problem."""
    return _Parser(query, list(attributes)).parse()


def attributes_of(node: Node) -> list[int]:
    """The attribute indices a query mentions, in order of first mention."""
    if isinstance(node, Attr):
        return [node.index]
    args = (node.arg,) if isinstance(node, Not) else node.args
    found: list[int] = []
    for arg in args:
        found += [i for i in attributes_of(arg) if i not in found]
    return found


_INVERSE = {">=": "<", ">": "<=", "<": ">=", "<=": ">"}


@dataclass(frozen=True)
class Driver:
    """A factor of the query's score that an attribute index can deliver best-first: the
    column, the scan order, and the term's own SQL condition (to count its matches)."""

    index: int
    descending: bool  # True: the factor is p (scan high to low); False: it is 1 - p
    condition: str


def drivers(node: Node, thresholds: list[float]) -> list[Driver]:
    """The single-attribute factors of a query whose score is their product (a bare name, a
    comparison or its negation, alone or in a top-level ``and``). Scanning one of them
    best-first, no later face can beat the current factor: the search can stop early."""
    terms = node.args if isinstance(node, And) else (node,)
    out = []
    for term in terms:
        attr, negated = (term.arg, True) if isinstance(term, Not) else (term, False)
        if not isinstance(attr, Attr):
            continue
        high = attr.op in (None, ">", ">=")
        cond, _ = to_sql(term, thresholds)
        out.append(Driver(attr.index, high != negated, cond))
    return out


def to_sql(node: Node, thresholds: list[float], greatest: str = "max") -> tuple[str, str]:
    """``(condition, score)`` SQL expressions over the columns ``a<i>``. Thresholds and
    numbers are written as literals (repr of a float round-trips exactly). ``greatest`` is
    the SQL function of the larger of two values (SQLite ``max``, PostgreSQL ``GREATEST``)."""
    if isinstance(node, Attr):
        col = f"a{node.index}"
        if node.op is None:
            return f"{col} >= {float(thresholds[node.index])!r}", col
        score = col if node.op in (">", ">=") else f"(1.0 - {col})"
        return f"{col} {node.op} {float(node.value)!r}", score  # type: ignore[arg-type]
    if isinstance(node, Not) and isinstance(node.arg, Attr):  # indexable: the inverse test
        a = node.arg
        value = float(thresholds[a.index]) if a.op is None else float(a.value)  # type: ignore[arg-type]
        op = _INVERSE[a.op or ">="]
        _, score = to_sql(a, thresholds, greatest)
        return f"a{a.index} {op} {value!r}", f"(1.0 - {score})"
    if isinstance(node, Not):
        cond, score = to_sql(node.arg, thresholds, greatest)
        return f"NOT ({cond})", f"(1.0 - {score})"
    parts = [to_sql(a, thresholds, greatest) for a in node.args]
    joiner = " AND " if isinstance(node, And) else " OR "
    cond = joiner.join(f"({c})" for c, _ in parts)
    if isinstance(node, And):
        score = " * ".join(s for _, s in parts)
    else:
        score = f"{greatest}({', '.join(s for _, s in parts)})"
    return cond, f"({score})"
