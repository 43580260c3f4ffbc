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

Limits: at most :data:`MAX_DEPTH` levels of parentheses and ``not`` (counted together: each
``(`` and each ``not`` opens one) and :data:`MAX_TERMS` attribute terms; a longer query is a
:class:`QueryError` naming the column, as is any text that is not a query (never another
exception, whatever the text).

Each face matching the query gets a score in [0, 1], its "combined probability", and results
are ranked by it: a name or ``>`` / ``>=`` comparison scores the probability ``p``, ``<`` /
``<=`` scores ``1 - p``, ``not`` is ``1 - score``, ``and`` multiplies, ``or`` takes the larger.

:func:`parse` gives a tree; :func:`evaluate` computes, for all faces at once, which match and
their scores from the index's column store of probabilities.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

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
MAX_DEPTH = 100  # levels of "(" and "not", counted together
MAX_TERMS = 1000  # attribute names in one query
_SHOWN = 70  # characters of the query shown around the column an error points at


class QueryError(UsageError):
    """A query that does not parse (exit code 2); the message points at the column
    (``column``, from 1)."""

    column: int = 0


def _error(query: str, column: int, what: str, hint: str | None = None) -> QueryError:
    """The error at ``column`` (0-based), with the query shown (around it, when long) and a
    caret under it."""
    start = max(0, min(column - _SHOWN // 2, len(query) - _SHOWN))
    shown = "".join(c if c.isprintable() else " " for c in query[start : start + _SHOWN])
    before = "..." if start > 0 else ""
    after = "..." if start + _SHOWN < len(query) else ""
    pointer = f"  {before}{shown}{after}\n  {' ' * (len(before) + column - start)}^"
    error = QueryError(f"Query error at column {column + 1}: {what}\n{pointer}", hint)
    error.column = column + 1
    return error


def _short(text: str) -> str:
    """A token for a message: quoted, cut when long."""
    return repr(text if len(text) <= 40 else text[:37] + "...")


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
        self.depth = 0  # levels of "(" and "not" open at this point
        self.terms = 0

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
            raise _error(self.query, self.column(), f"unexpected {_short(self.peek()[1])}; "  # type: ignore[index]
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

    def deeper(self, column: int) -> None:
        """One more level of "(" or "not" opens at ``column``."""
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise _error(self.query, column, f"more than {MAX_DEPTH} levels of parentheses and "
                         "'not' (counted together).", "Write the query with fewer levels: "
                         "'((A))' is 'A', and 'not not A' is 'A'.")  # fmt: skip

    def not_(self) -> Node:
        column = self.column()
        if self.keyword("not"):
            self.deeper(column)
            node = self.not_()
            self.depth -= 1
            return Not(node)
        return self.atom()

    def atom(self) -> Node:
        tok = self.peek()
        if tok is None:
            raise _error(self.query, len(self.query), "the query ends too soon; expected an "
                         "attribute name or '('.", _HELP)  # fmt: skip
        kind, text, col = tok
        if kind == "par" and text == "(":
            self.deeper(col)
            self.pos += 1
            node = self.or_()
            close = self.peek()
            if close is None or close[1] != ")":
                raise _error(self.query, self.column(), "expected ')'.", _HELP)
            self.pos += 1
            self.depth -= 1
            return node
        if kind != "word" or text.lower() in _KEYWORDS:
            raise _error(self.query, col, f"expected an attribute name or '(', got {_short(text)}.",
                         _HELP)  # fmt: skip
        self.terms += 1
        if self.terms > MAX_TERMS:
            raise _error(self.query, col, f"more than {MAX_TERMS} attribute names in one query.")
        self.pos += 1
        index = self.by_lower.get(text.lower())
        if index is None:
            near = close_matches(text, self.attributes) if len(text) <= 64 else []
            did = f" Did you mean: {', '.join(near)}?" if near else ""
            raise _error(self.query, col, f"unknown attribute {_short(text)}.{did}",
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
            raise _error(self.query, num[2], f"{_short(num[1])} is not a probability (0 to 1).")
        self.pos += 1
        return Attr(index, self.attributes[index], op[1], value)


def parse(query: str, attributes: list[str]) -> Node:
    """The tree of ``query``; a :class:`QueryError` (exit 2) pointing at the problem."""
    if not isinstance(query, str):
        raise QueryError(f"The query must be text, not {type(query).__name__}.", _HELP)
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


def evaluate(node: Node, column, thresholds) -> tuple[np.ndarray, np.ndarray]:
    """``(matches, score)`` of every face at once: boolean and float64 arrays, from
    ``column(i)``, the float64 probabilities of attribute ``i`` for all faces."""
    if isinstance(node, Attr):
        p = column(node.index)
        if node.op is None:
            return p >= float(thresholds[node.index]), p
        v = float(node.value)  # type: ignore[arg-type]
        test = {">": np.greater, ">=": np.greater_equal, "<": np.less, "<=": np.less_equal}
        return test[node.op](p, v), (p if node.op in (">", ">=") else 1.0 - p)
    if isinstance(node, Not):
        m, score = evaluate(node.arg, column, thresholds)
        return ~m, 1.0 - score
    # Folded one argument at a time: memory for two results, however many arguments.
    first, *rest = node.args
    m, score = evaluate(first, column, thresholds)
    m, score = np.array(m, dtype=bool), np.array(score, dtype=np.float64)
    for arg in rest:
        m2, s2 = evaluate(arg, column, thresholds)
        if isinstance(node, And):
            np.logical_and(m, m2, out=m)
            np.multiply(score, s2, out=score)
        else:
            np.logical_or(m, m2, out=m)
            np.maximum(score, s2, out=score)
    return m, score
