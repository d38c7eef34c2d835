"""A LogQL parser for the Loki stand-in: the subset product code speaks, with Loki's errors.

Loki parses LogQL with a goyacc grammar over a `text/scanner` lexer; clients (and the
people reading their logs) see its error text verbatim, e.g.
``parse error at line 1, col 11: syntax error: unexpected $end, expecting } or ,``.
This module is a small recursive-descent parser that accepts:

* log queries: ``{l="v", l!="v", l=~"re", l!~"re"}`` followed by chained line filters
  ``|= != |~ !~`` (each optionally ``or``-ed with more strings);
* metric queries: ``count_over_time``/``rate``/``bytes_over_time``/``bytes_rate`` over
  ``<log query>[<range>]``, optionally wrapped in ``sum|count|min|max|avg`` with
  ``by (...)``/``without (...)`` before or after the argument;
* constant expressions: ``vector(n)``, number literals and the arithmetic operators
  between them (Grafana's data-source health check is ``vector(1)+vector(1)``).

It reports errors at the same positions and with the same token names as Loki's parser
for the common mistakes (unterminated selector or string, missing filter operand, stray
tokens). Constructs Loki supports but this parser does not (``| json``, ``| logfmt``,
label filters, binary operators on log metrics, ...) raise `UnsupportedQuery` so the HTTP layer can
answer a clear 400 instead of a misleading syntax error.

Label regexes are fully anchored and line-filter regexes are searched, as in Loki; both
are compiled with Python's `re`, which agrees with RE2 on the syntax logs queries use.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field

EMPTY_COMPATIBLE_ERROR = (
    "queries require at least one regexp or equality matcher that does not have an "
    'empty-compatible value. For instance, app=~".*" does not meet this requirement, '
    'but app=~".+" will'
)
MAX_INPUT_SIZE = 5120

RANGE_OPS = ("count_over_time", "rate", "bytes_over_time", "bytes_rate")
VECTOR_OPS = ("sum", "count", "min", "max", "avg")
# Loki's lexer knows many more functions; they lex as function tokens (so errors name
# them correctly) but are refused as unsupported.
OTHER_FUNCTIONS = (
    "rate_counter",
    "avg_over_time",
    "sum_over_time",
    "min_over_time",
    "max_over_time",
    "stdvar_over_time",
    "stddev_over_time",
    "quantile_over_time",
    "first_over_time",
    "last_over_time",
    "absent_over_time",
    "vector",
    "stddev",
    "stdvar",
    "bottomk",
    "topk",
    "sort",
    "sort_desc",
    "label_replace",
    "approx_topk",
)
_FUNCTIONS = frozenset(RANGE_OPS + VECTOR_OPS + OTHER_FUNCTIONS)
_KEYWORDS = frozenset(
    {
        "by",
        "without",
        "or",
        "and",
        "unless",
        "bool",
        "offset",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "json",
        "logfmt",
        "regexp",
        "unpack",
        "pattern",
        "line_format",
        "label_format",
        "ip",
        "decolorize",
        "drop",
        "keep",
        "unwrap",
    }
)
_PUNCT = (
    "|=",
    "|~",
    "|>",
    "!=",
    "=~",
    "!~",
    "!>",
    "==",
    ">=",
    "<=",
    "{",
    "}",
    "(",
    ")",
    ",",
    "=",
    "|",
    ">",
    "<",
    "+",
    "-",
    "*",
    "/",
    "%",
    "^",
    ".",
)
_LINE_FILTER_OPS = frozenset({"|=", "!=", "|~", "!~"})
_MATCH_OPS = frozenset({"=", "!=", "=~", "!~"})
_DURATION_RE = re.compile(
    r"(?:(\d+)y)?(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?"
    r"(?:(\d+)s)?(?:(\d+)ms)?"
)
_DURATION_UNITS_NS = (
    365 * 86400 * 10**9,
    7 * 86400 * 10**9,
    86400 * 10**9,
    3600 * 10**9,
    60 * 10**9,
    10**9,
    10**6,
)
_SIMPLE_ESCAPES = {
    "a": "\a",
    "b": "\b",
    "f": "\f",
    "n": "\n",
    "r": "\r",
    "t": "\t",
    "v": "\v",
    "\\": "\\",
    "'": "'",
    '"': '"',
}


class ParseError(Exception):
    """A LogQL error worded exactly like Loki's `logqlmodel.ParseError`."""

    def __init__(self, msg: str, line: int = 0, col: int = 0) -> None:
        self.msg, self.line, self.col = msg, line, col
        super().__init__(str(self))

    def __str__(self) -> str:
        if self.line == 0 and self.col == 0:
            return f"parse error : {self.msg}"
        return f"parse error at line {self.line}, col {self.col}: {self.msg}"


class UnsupportedQuery(Exception):
    """Valid LogQL that this stand-in does not evaluate."""


# ---------------------------------------------------------------- AST


@dataclass(frozen=True)
class Matcher:
    name: str
    op: str  # one of = != =~ !~
    value: str
    regex: re.Pattern[str] | None = None

    def matches(self, value: str) -> bool:
        if self.op == "=":
            return value == self.value
        if self.op == "!=":
            return value != self.value
        hit = self.regex.fullmatch(value) is not None  # type: ignore[union-attr]
        return hit if self.op == "=~" else not hit


@dataclass(frozen=True)
class LineFilter:
    op: str  # one of |= != |~ !~
    values: tuple[str, ...]  # more than one when `or`-ed
    regexes: tuple[re.Pattern[str], ...] = ()

    def matches(self, line: str) -> bool:
        if self.op in ("|=", "!="):
            hit = any(v in line for v in self.values)
        else:
            hit = any(r.search(line) is not None for r in self.regexes)
        return hit if self.op in ("|=", "|~") else not hit


@dataclass(frozen=True)
class LogQuery:
    matchers: tuple[Matcher, ...]
    filters: tuple[LineFilter, ...] = ()

    def matches_labels(self, labels: dict[str, str]) -> bool:
        return all(m.matches(labels.get(m.name, "")) for m in self.matchers)

    def line_predicate(self) -> Callable[[str], bool] | None:
        """One callable for the whole filter chain, or None when there is no filter."""
        filters = self.filters
        if not filters:
            return None
        if len(filters) == 1:
            return filters[0].matches
        return lambda line: all(f.matches(line) for f in filters)


@dataclass(frozen=True)
class RangeAggregation:
    op: str  # one of RANGE_OPS
    query: LogQuery
    range_ns: int


@dataclass(frozen=True)
class VectorAggregation:
    op: str  # one of VECTOR_OPS
    inner: RangeAggregation | VectorAggregation
    by: tuple[str, ...] = ()
    without: tuple[str, ...] | None = None  # set when grouping is `without (...)`


@dataclass(frozen=True)
class Literal:
    """A number literal (`2`, `-1.5`), or `vector(n)` when `vector` is set."""

    value: float
    vector: bool = False


@dataclass(frozen=True)
class BinaryOp:
    """Arithmetic between constant operands, e.g. Grafana's health check
    `vector(1)+vector(1)`; binary operations on log-derived metrics are not supported."""

    op: str  # + - * / % ^
    lhs: Literal | BinaryOp
    rhs: Literal | BinaryOp


Constant = Literal | BinaryOp
MetricQuery = RangeAggregation | VectorAggregation
Query = LogQuery | RangeAggregation | VectorAggregation | Literal | BinaryOp

# Prometheus' (and so LogQL's) arithmetic precedence; `^` is right-associative.
_ARITHMETIC = {"+": 1, "-": 1, "*": 2, "/": 2, "%": 2, "^": 3}


def evaluate_constant(expr: Constant) -> tuple[float, bool]:
    """The value of a constant expression and whether it is a vector (else a scalar).

    A vector here is `vector(n)`'s single sample with no labels; an operation with a
    vector on either side is a vector, as in Prometheus.
    """
    if isinstance(expr, Literal):
        return expr.value, expr.vector
    lhs, lhs_vector = evaluate_constant(expr.lhs)
    rhs, rhs_vector = evaluate_constant(expr.rhs)
    return _arithmetic(expr.op, lhs, rhs), lhs_vector or rhs_vector


def _arithmetic(op: str, lhs: float, rhs: float) -> float:
    """Go float64 arithmetic: division by zero gives ±Inf or NaN, `%` is math.Mod."""
    if op == "+":
        return lhs + rhs
    if op == "-":
        return lhs - rhs
    if op == "*":
        return lhs * rhs
    if op == "/":
        if rhs == 0:
            return math.nan if lhs == 0 or math.isnan(lhs) else math.copysign(math.inf, lhs)
        return lhs / rhs
    if op == "%":
        return math.nan if rhs == 0 or math.isinf(lhs) else math.fmod(lhs, rhs)
    try:
        return math.pow(lhs, rhs)
    except OverflowError:
        return math.inf
    except ValueError:
        return math.nan


def is_constant(query: Query) -> bool:
    return isinstance(query, Literal | BinaryOp)


def selector_of(query: Query) -> LogQuery:
    while not isinstance(query, LogQuery):
        query = query.query if isinstance(query, RangeAggregation) else query.inner
    return query


# ---------------------------------------------------------------- lexer


@dataclass
class Token:
    kind: str  # Loki's token name as it appears in its error messages
    text: str
    pos: int  # offset of the first character
    string: str = ""  # decoded value of a STRING
    ns: int = 0  # length of a RANGE


@dataclass
class _Lexer:
    src: str
    pos: int = 0
    tokens: list[Token] = field(default_factory=list)

    def error(self, msg: str, pos: int) -> ParseError:
        line, col = position(self.src, pos)
        return ParseError(msg, line, col)

    def run(self) -> list[Token]:
        src = self.src
        while True:
            self._skip_space_and_comments()
            if self.pos >= len(src):
                self.tokens.append(Token("$end", "", len(src)))
                return self.tokens
            self.tokens.append(self._next())

    def _skip_space_and_comments(self) -> None:
        src = self.src
        while self.pos < len(src):
            ch = src[self.pos]
            if ch.isspace():
                self.pos += 1
            elif ch == "#":
                end = src.find("\n", self.pos)
                self.pos = len(src) if end < 0 else end
            else:
                return

    def _next(self) -> Token:
        src, start = self.src, self.pos
        ch = src[start]
        if ch in '"`':
            return self._string(start)
        if ch == "[":
            return self._range(start)
        if ch.isalpha() or ch == "_":
            end = start
            while end < len(src) and (src[end].isalnum() or src[end] == "_"):
                end += 1
            self.pos = end
            return self._word(src[start:end], start)
        if ch.isdigit():
            end = start
            while end < len(src) and (src[end].isalnum() or src[end] == "."):
                end += 1
            self.pos = end
            text = src[start:end]
            kind = "DURATION" if parse_duration_ns(text) is not None else "NUMBER"
            return Token(kind, text, start)
        for punct in _PUNCT:
            if src.startswith(punct, start):
                self.pos = start + len(punct)
                return Token(punct, punct, start)
        self.pos = start + 1
        return Token("$unk", ch, start)

    def _word(self, word: str, start: int) -> Token:
        lower = word.lower()
        if lower in _FUNCTIONS and self._followed_by_call():
            return Token(lower.upper(), word, start)
        if lower in _KEYWORDS:
            return Token(lower, word, start)
        return Token("IDENTIFIER", word, start)

    def _followed_by_call(self) -> bool:
        """Loki lexes `sum` as a function only before `(` or `by (`/`without (`."""
        rest = self.src[self.pos :].lstrip()
        if rest.startswith("("):
            return True
        for kw in ("by", "without"):
            if rest[: len(kw)].lower() == kw and rest[len(kw) :].lstrip().startswith("("):
                return True
        return False

    def _string(self, start: int) -> Token:
        src = self.src
        quote = src[start]
        i = start + 1
        while i < len(src) and src[i] != quote:
            if quote == '"' and src[i] == "\n":
                break
            i += 2 if (quote == '"' and src[i] == "\\") else 1
        if i >= len(src) or src[i] != quote:
            raise self.error("literal not terminated", start)
        self.pos = i + 1
        raw = src[start + 1 : i]
        value = raw if quote == "`" else self._unescape(raw, start)
        return Token("STRING", src[start : i + 1], start, string=value)

    def _unescape(self, raw: str, start: int) -> str:
        out: list[str] = []
        i = 0
        while i < len(raw):
            ch = raw[i]
            if ch != "\\":
                out.append(ch)
                i += 1
                continue
            esc = raw[i + 1] if i + 1 < len(raw) else ""
            if esc in _SIMPLE_ESCAPES:
                out.append(_SIMPLE_ESCAPES[esc])
                i += 2
                continue
            width = {"x": 2, "u": 4, "U": 8}.get(esc)
            digits = raw[i + 2 : i + 2 + width] if width else raw[i + 1 : i + 4]
            base = 16 if width else 8
            valid = set("0123456789abcdefABCDEF" if width else "01234567")
            if len(digits) != (width or 3) or not set(digits) <= valid:
                raise self.error("invalid char escape", start + 1 + i)
            out.append(chr(int(digits, base)))
            i += 2 + width if width else 4
        return "".join(out)

    def _range(self, start: int) -> Token:
        end = self.src.find("]", start)
        if end < 0:
            raise self.error("missing closing ']' in duration", len(self.src))
        self.pos = end + 1
        text = self.src[start + 1 : end]
        ns = parse_duration_ns(text)
        if ns is None:
            raise self.error(f'not a valid duration string: "{text}"', end + 1)
        return Token("RANGE", self.src[start : end + 1], start, ns=ns)


def position(src: str, offset: int) -> tuple[int, int]:
    """1-based (line, column) of `offset`, as Go's text/scanner counts them."""
    line = src.count("\n", 0, offset) + 1
    col = offset - (src.rfind("\n", 0, offset) + 1) + 1
    return line, col


def parse_duration_ns(text: str) -> int | None:
    """Prometheus duration (`1h30m`, `5m`, `250ms`) in nanoseconds, or None."""
    if text == "0":
        return 0
    m = _DURATION_RE.fullmatch(text)
    if not text or m is None:
        return None
    return sum(int(g) * unit for g, unit in zip(m.groups(), _DURATION_UNITS_NS, strict=True) if g)


# ---------------------------------------------------------------- parser


class _Parser:
    def __init__(self, src: str) -> None:
        self.src = src
        self.tokens = _Lexer(src).run()
        self.i = 0

    @property
    def tok(self) -> Token:
        return self.tokens[self.i]

    def advance(self) -> Token:
        tok = self.tokens[self.i]
        self.i += 1
        return tok

    def syntax_error(self, *expecting: str) -> ParseError:
        tok = self.tok
        msg = f"syntax error: unexpected {tok.kind}"
        if expecting:
            msg += ", expecting " + " or ".join(expecting)
        line, col = position(self.src, tok.pos)
        return ParseError(msg, line, col)

    def expect(self, kind: str, *also: str) -> Token:
        if self.tok.kind != kind:
            raise self.syntax_error(kind, *also)
        return self.advance()

    # expr := logExpr | metricExpr | constant {arithmeticOp constant}
    def parse(self) -> Query:
        expr = self.arithmetic(0)
        if self.tok.kind != "$end":
            self._refuse_trailing()
        return expr

    def arithmetic(self, min_precedence: int) -> Query:
        """Precedence climbing over `+ - * / % ^`, for constant operands only."""
        lhs = self.expr()
        while (precedence := _ARITHMETIC.get(self.tok.kind, 0)) >= max(min_precedence, 1):
            if not is_constant(lhs):
                raise UnsupportedQuery("binary operations are not supported")
            op = self.advance().kind
            rhs = self.arithmetic(precedence if op == "^" else precedence + 1)
            if not is_constant(rhs):
                raise UnsupportedQuery("binary operations are not supported")
            lhs = BinaryOp(op, lhs, rhs)
        return lhs

    def expr(self) -> Query:
        kind = self.tok.kind
        if kind == "{":
            return self.log_query()
        if kind == "(":
            self.advance()
            inner = self.arithmetic(0)
            self.expect(")")
            return inner
        if kind.lower() in RANGE_OPS:
            return self.range_aggregation()
        if kind.lower() in VECTOR_OPS:
            return self.vector_aggregation()
        if kind == "VECTOR":
            self.advance()
            self.expect("(")
            value = self.number()
            self.expect(")")
            return Literal(value, vector=True)
        if kind.lower() in OTHER_FUNCTIONS:
            raise UnsupportedQuery(f"the function {kind.lower()} is not supported")
        if kind in ("NUMBER", "DURATION"):
            return Literal(self.number())
        if kind in ("+", "-") and self.tokens[self.i + 1].kind in ("NUMBER", "DURATION"):
            sign = -1.0 if self.advance().kind == "-" else 1.0
            return Literal(sign * self.number())
        raise self.syntax_error()

    def number(self) -> float:
        tok = self.tok
        if tok.kind not in ("NUMBER", "DURATION"):
            raise self.syntax_error("NUMBER")
        try:
            value = float(tok.text)
        except ValueError:
            try:
                value = float(int(tok.text, 0))
            except ValueError:
                raise self.syntax_error("NUMBER") from None
        self.advance()
        return value

    def _refuse_trailing(self) -> None:
        kind = self.tok.kind
        if kind in (
            "+",
            "-",
            "*",
            "/",
            "%",
            "^",
            "==",
            "!=",
            ">",
            "<",
            ">=",
            "<=",
            "or",
            "and",
            "unless",
        ):
            raise UnsupportedQuery("binary operations are not supported")
        raise self.syntax_error()

    # selector := '{' [matcher {',' matcher}] '}'
    def selector(self) -> tuple[Matcher, ...]:
        self.expect("{")
        if self.tok.kind == "}":
            self.advance()
            return ()
        matchers = [self.matcher(first=True)]
        while self.tok.kind == ",":
            self.advance()
            matchers.append(self.matcher(first=False))
        if self.tok.kind != "}":
            raise self.syntax_error("}", ",")
        self.advance()
        return tuple(matchers)

    def matcher(self, first: bool) -> Matcher:
        if self.tok.kind != "IDENTIFIER":
            raise self.syntax_error(*(("IDENTIFIER", "}") if first else ("IDENTIFIER",)))
        name = self.advance().text
        if self.tok.kind not in _MATCH_OPS:
            raise self.syntax_error("=", "=~", "!~", "!=")
        op = self.advance().kind
        value = self.expect("STRING").string
        # Prometheus anchors label regexes and lets `.` match newlines.
        regex = compile_regex(f"^(?s:{value})$") if op in ("=~", "!~") else None
        return Matcher(name, op, value, regex)

    # logExpr := selector {lineFilter}
    def log_query(self) -> LogQuery:
        matchers = self.selector()
        filters: list[LineFilter] = []
        while True:
            kind = self.tok.kind
            if kind in _LINE_FILTER_OPS:
                filters.append(self.line_filter())
            elif kind in ("|>", "!>"):
                raise UnsupportedQuery("pattern line filters are not supported")
            elif kind == "|":
                self.advance()
                stage = self.tok.text or "|"
                raise UnsupportedQuery(f"the pipeline stage '| {stage}' is not supported")
            else:
                return LogQuery(matchers, tuple(filters))

    def line_filter(self) -> LineFilter:
        op = self.advance().kind
        if self.tok.kind == "ip":
            raise UnsupportedQuery("ip() line filters are not supported")
        values = [self.expect("STRING", "ip").string]
        while self.tok.kind == "or":
            self.advance()
            values.append(self.expect("STRING", "ip").string)
        strs = tuple(values)
        regexes = tuple(compile_regex(v) for v in strs) if op in ("|~", "!~") else ()
        return LineFilter(op, strs, regexes)

    # rangeAggregation := rangeOp '(' logExpr RANGE ')'
    def range_aggregation(self) -> RangeAggregation:
        op = self.advance().kind.lower()
        self.expect("(")
        if self.tok.kind != "{":
            raise self.syntax_error()
        query = self.log_query()
        if self.tok.kind != "RANGE":
            raise self.syntax_error()
        range_ns = self.advance().ns
        if self.tok.kind == "offset":
            raise UnsupportedQuery("offset modifiers are not supported")
        self.expect(")")
        if self.tok.kind in ("by", "without"):
            raise UnsupportedQuery(f"grouping on {op} is not supported")
        return RangeAggregation(op, query, range_ns)

    # vectorAggregation := vectorOp [grouping] '(' metricExpr ')' [grouping]
    def vector_aggregation(self) -> VectorAggregation:
        op = self.advance().kind.lower()
        grouping = self.grouping() if self.tok.kind in ("by", "without") else None
        self.expect("(")
        if self.tok.kind == "NUMBER":
            raise UnsupportedQuery(f"the parameterised aggregation {op}(n, ...) is not supported")
        inner = self.expr()
        if isinstance(inner, LogQuery):
            raise self.syntax_error()
        if is_constant(inner):
            raise UnsupportedQuery(f"{op} over vector() and literals is not supported")
        self.expect(")")
        if self.tok.kind in ("by", "without"):
            if grouping is not None:
                raise ParseError("duplicate grouping", *position(self.src, self.tok.pos))
            grouping = self.grouping()
        if grouping is None:
            return VectorAggregation(op, inner)
        kind, labels = grouping
        if kind == "by":
            return VectorAggregation(op, inner, by=labels)
        return VectorAggregation(op, inner, without=labels)

    def grouping(self) -> tuple[str, tuple[str, ...]]:
        kind = self.advance().kind
        self.expect("(")
        labels: list[str] = []
        if self.tok.kind != ")":
            labels.append(self.expect("IDENTIFIER", ")").text)
            while self.tok.kind == ",":
                self.advance()
                labels.append(self.expect("IDENTIFIER").text)
        self.expect(")", ",")
        return kind, tuple(labels)


def compile_regex(pattern: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ParseError(f"error parsing regexp: {exc.msg}: `{pattern}`") from None


def parse(query: str) -> Query:
    """Parse and validate a LogQL query as Loki's `syntax.ParseExpr` does."""
    if len(query) >= MAX_INPUT_SIZE:
        raise ParseError(f"input size too long ({len(query)} > {MAX_INPUT_SIZE})")
    expr = _Parser(query).parse()
    if not is_constant(expr):
        validate_matchers(selector_of(expr).matchers)
    return expr


def parse_matchers(selector: str) -> tuple[Matcher, ...]:
    """Parse a bare stream selector (the `match[]` and `query` params of metadata APIs)."""
    expr = parse(selector)
    if not isinstance(expr, LogQuery) or expr.filters:
        raise ParseError("only label matchers are supported")
    return expr.matchers


def validate_matchers(matchers: tuple[Matcher, ...]) -> None:
    """Loki refuses selectors whose every matcher also matches the empty string."""
    if not any(not m.matches("") for m in matchers):
        raise ParseError(EMPTY_COMPATIBLE_ERROR)
