"""Kubernetes label selectors (k8s.io/apimachinery/pkg/labels/selector.go), parsed once, used two ways.

Syntax, exactly as labels.Parse reads it (the HPA's selector reaches the adapter in that form):
comma-separated requirements, each one of `key=value`, `key==value`, `key!=value`, `key in (v1,v2)`,
`key notin (v1,v2)`, `key` (exists), `!key` (does not exist). Keys are qualified names (optional
DNS-subdomain prefix + "/" + name of at most 63 characters); values are at most 63 characters of
`[A-Za-z0-9._-]` starting and ending alphanumeric, or empty (`x in ()` is the set holding ""). `key>N` /
`key<N` parse (as in labels.Parse) but are refused here: an HPA's metricSelector cannot produce them
and PromQL has no matcher for them.

`Selector.matches(labels)` filters pods or series; `Selector.promql_matchers()` renders PromQL matchers, with
keys mapped the way Prometheus' Kubernetes service discovery maps pod labels (every character outside
`[a-zA-Z0-9_]` becomes `_`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

# Always fullmatch (Go's regexp "$" is the end of text; Python's also matches before a trailing newline).
_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_PROM_INVALID = re.compile(r"[^a-zA-Z0-9_]")
MAX_SELECTOR_LENGTH = 4096


class SelectorError(ValueError):
    """The selector is not valid Kubernetes label selector syntax."""


@dataclass(frozen=True, slots=True)
class Requirement:
    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!"
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        if self.op == "exists":
            return present
        if self.op == "!":
            return not present
        if self.op in ("=", "in"):
            return present and labels[self.key] in self.values
        # "!=" and "notin" also match when the label is absent, as in Kubernetes.
        return not present or labels[self.key] not in self.values


@dataclass(frozen=True, slots=True)
class Selector:
    requirements: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(r.matches(labels) for r in self.requirements)

    def empty(self) -> bool:
        return not self.requirements

    def promql_matchers(self) -> list[str]:
        """PromQL matchers selecting the series `matches` selects. Prometheus has no empty label values (a
        label set to "" is the label absent), so "present" is `!=""` and an empty value in a set means
        "absent": `=`/`in` require the key (`app in (x,)` is `app=~"x|",app!=""`, not `app=~"x|"`, which
        would also take series without `app`); `!=`/`notin` already accept an absent key, so "" adds nothing
        there (`app notin (x,)` is `app!~"x"`; with no other value it matches every series: `app=~".*"`)."""
        out = []
        for r in self.requirements:
            name = prometheus_label_name(r.key)
            if r.op in ("=", "in"):
                if r.op == "=":
                    out.append(f"{name}={_promql_string(r.values[0])}")
                else:
                    out.append(f"{name}=~{_promql_string(_alternation(r.values))}")
                if "" in r.values:
                    out.append(f'{name}!=""')
            elif r.op in ("!=", "notin"):
                values = tuple(v for v in r.values if v)
                if not values:
                    out.append(f'{name}=~".*"')
                elif r.op == "!=":
                    out.append(f"{name}!={_promql_string(values[0])}")
                else:
                    out.append(f"{name}!~{_promql_string(_alternation(values))}")
            elif r.op == "exists":
                out.append(f'{name}!=""')
            else:
                out.append(f'{name}=""')
        return out

    def __str__(self) -> str:
        parts = []
        for r in self.requirements:
            if r.op in ("=", "!="):
                parts.append(f"{r.key}{r.op}{r.values[0]}")
            elif r.op in ("in", "notin"):
                parts.append(f"{r.key} {r.op} ({','.join(r.values)})")
            elif r.op == "exists":
                parts.append(r.key)
            else:
                parts.append(f"!{r.key}")
        return ",".join(parts)


def prometheus_label_name(key: str) -> str:
    name = _PROM_INVALID.sub("_", key)
    return "_" + name if name[:1].isdigit() else name


def _promql_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _alternation(values: tuple[str, ...]) -> str:
    # Prometheus anchors regex matchers; label values are [A-Za-z0-9._-] so only "." needs escaping.
    return "|".join(re.escape(v) for v in values)


def validate_key(key: str) -> None:
    prefix, _, name = key.rpartition("/")
    if "/" in key and not prefix:
        raise SelectorError(f"invalid label key {key!r}: prefix part must be non-empty")
    if prefix and (len(prefix) > 253 or not _DNS_SUBDOMAIN.fullmatch(prefix)):
        raise SelectorError(f"invalid label key {key!r}: prefix must be a DNS subdomain (lowercase, <= 253)")
    if not name or len(name) > 63 or not _NAME.fullmatch(name):
        raise SelectorError(
            f"invalid label key {key!r}: name part must be 1-63 characters of [A-Za-z0-9._-], "
            "beginning and ending with an alphanumeric character"
        )


def validate_value(value: str) -> None:
    if value and (len(value) > 63 or not _NAME.fullmatch(value)):
        raise SelectorError(
            f"invalid label value {value!r}: must be at most 63 characters of [A-Za-z0-9._-], "
            "beginning and ending with an alphanumeric character"
        )


# ---------------------------------------------------------------- the parser: labels.Parse, ported
#
# A port of k8s.io/apimachinery/pkg/labels/selector.go (Lexer, Parser, NewRequirement), kept close to the Go
# so that it accepts and rejects exactly what labels.Parse does (its cases: selector_test.go; the real
# labels.Parse, v0.37.2, is run against it on thousands of generated selectors by
# tests/adapter/test_selectors_vs_go.py). Points where a hand-written parser differs easily: only " \t\r\n"
# are whitespace; "in"/"notin" are keywords only where an operator is expected (`in=x`, `notin=in` and
# `x in (in)` are valid); `x in ()` and `x notin ( )` are the set holding "" (labels.Parse's "()" case), and
# so are the empty values of `(a,,)` and `(,,)`; a NUL character ends the input where a token starts, as Go's
# lexer reads byte 0 as "end of string".

_EOS, _CLOSE, _COMMA, _NOT, _DEQ, _EQ, _GT, _IDENT, _IN, _LT, _NEQ, _NOTIN, _OPEN, _ERR = range(14)
_STRING_TO_TOKEN = {
    ")": _CLOSE, ",": _COMMA, "!": _NOT, "==": _DEQ, "=": _EQ, ">": _GT, "in": _IN, "<": _LT, "!=": _NEQ,
    "notin": _NOTIN, "(": _OPEN,
}
_WHITESPACE = frozenset(" \t\r\n")
_SPECIAL = frozenset("=!(),><")
_END = "\x00"
_BINARY = {_IN: "in", _NOTIN: "notin", _EQ: "=", _DEQ: "=", _NEQ: "!=", _GT: ">", _LT: "<"}


def _lex(text: str) -> list[tuple[int, str]]:
    """Every token up to and including the first end of string (Parser.scan over Lexer.Lex)."""
    pos = 0
    n = len(text)

    def read() -> str:
        nonlocal pos
        if pos < n:
            pos += 1
            return text[pos - 1]
        return _END

    items: list[tuple[int, str]] = []
    while True:
        ch = read()
        while ch in _WHITESPACE:
            ch = read()
        if ch == _END:
            items.append((_EOS, ""))
            return items
        pos -= 1
        buf: list[str] = []
        if ch in _SPECIAL:  # scanSpecialSymbol: the longest run of specials that is a token
            last: tuple[int, str] | None = None
            while True:
                c = read()
                if c == _END:
                    break
                if c not in _SPECIAL:
                    pos -= 1
                    break
                buf.append(c)
                tok = _STRING_TO_TOKEN.get("".join(buf))
                if tok is not None:
                    last = (tok, "".join(buf))
                elif last is not None:
                    pos -= 1
                    break
            items.append(last if last is not None else (_ERR, "".join(buf)))
        else:  # scanIDOrKeyword
            while True:
                c = read()
                if c == _END:
                    break
                if c in _SPECIAL or c in _WHITESPACE:
                    pos -= 1
                    break
                buf.append(c)
            word = "".join(buf)
            items.append((_STRING_TO_TOKEN.get(word, _IDENT), word))


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.items = _lex(text)
        self.pos = 0

    def fail(self, message: str) -> SelectorError:
        return SelectorError(f"label selector {self.text!r}: {message}")

    def lookahead(self, values: bool = True) -> tuple[int, str]:
        tok, lit = self.items[self.pos]
        return (_IDENT if values and tok in (_IN, _NOTIN) else tok), lit

    def consume(self, values: bool = True) -> tuple[int, str]:
        tok, lit = self.lookahead(values)
        self.pos += 1
        return tok, lit

    def parse(self) -> list[Requirement]:
        reqs: list[Requirement] = []
        while True:
            tok, lit = self.lookahead()
            if tok == _EOS:
                return reqs
            if tok not in (_IDENT, _NOT):
                raise self.fail(f"found {lit!r}, expected: !, identifier, or end of string")
            reqs.append(self.requirement())
            tok, lit = self.consume()
            if tok == _EOS:
                return reqs
            if tok != _COMMA:
                raise self.fail(f"found {lit!r}, expected: ',' or end of string")
            tok, lit = self.lookahead()
            if tok not in (_IDENT, _NOT):
                raise self.fail(f"found {lit!r}, expected: identifier after ','")

    def requirement(self) -> Requirement:
        tok, key = self.consume()
        negated = tok == _NOT
        if negated:
            tok, key = self.consume()
        if tok != _IDENT:
            raise self.fail(f"found {key!r}, expected: identifier")
        validate_key(key)
        if negated:
            return Requirement(key, "!")  # whatever follows is the caller's "expected ','" error
        if self.lookahead()[0] in (_EOS, _COMMA):
            return Requirement(key, "exists")
        tok, lit = self.consume(values=False)
        op = _BINARY.get(tok)
        if op is None:
            raise self.fail(f"found {lit!r}, expected: in, notin, =, ==, !=, >, <")
        values = self.value_set() if op in ("in", "notin") else (self.exact_value(),)
        for v in values:
            validate_value(v)
        if op in (">", "<"):
            v = values[0]
            if not _INT.fullmatch(v) or not -(2**63) <= int(v) < 2**63:  # strconv.ParseInt(v, 10, 64)
                raise self.fail(f"for '>' and '<' the value must be an integer, got {v!r}")
        return Requirement(key, op, tuple(sorted(set(values))))

    def exact_value(self) -> str:
        tok, _ = self.lookahead()
        if tok in (_EOS, _COMMA):
            return ""
        tok, lit = self.consume()
        if tok != _IDENT:
            raise self.fail(f"found {lit!r}, expected: identifier")
        return lit

    def value_set(self) -> tuple[str, ...]:
        tok, lit = self.consume()
        if tok != _OPEN:
            raise self.fail(f"found {lit!r}, expected: '('")
        tok, lit = self.lookahead()
        if tok == _CLOSE:  # "()": the set holding the empty value
            self.consume()
            return ("",)
        if tok not in (_IDENT, _COMMA):
            raise self.fail(f"found {lit!r}, expected: ',', ')' or identifier")
        values = self.identifiers()
        tok, lit = self.consume()
        if tok != _CLOSE:  # pragma: no cover - identifiers() returns only with ')' next
            raise self.fail(f"found {lit!r}, expected: ')'")
        return tuple(values)

    def identifiers(self) -> set[str]:
        out: set[str] = set()
        while True:
            tok, lit = self.consume()
            if tok == _IDENT:
                out.add(lit)
                tok2, lit2 = self.lookahead()
                if tok2 == _COMMA:
                    continue
                if tok2 == _CLOSE:
                    return out
                raise self.fail(f"found {lit2!r}, expected: ',' or ')'")
            if tok == _COMMA:
                if not out:
                    out.add("")  # "(,"
                tok2, _ = self.lookahead()
                if tok2 == _CLOSE:
                    out.add("")  # ",)"
                    return out
                if tok2 == _COMMA:
                    # ",,": the second comma is not consumed here but read by the next turn, which sees
                    # what follows it (`(a,,)` ends there, as in Go; consuming it refused `(a,,)`, issue 24)
                    out.add("")
                continue
            raise self.fail(f"found {lit!r}, expected: ',', or identifier")


_INT = re.compile(r"[+-]?[0-9]+")


def parse_selector(text: str | None) -> Selector:
    """Parse a label selector string as labels.Parse does; the empty string selects everything. `>` and
    `<` parse (and their value must be an integer) but are refused: an HPA's metricSelector cannot produce
    them and PromQL has no matcher for them."""
    if text is None:
        return Selector()
    if len(text) > MAX_SELECTOR_LENGTH:
        raise SelectorError(f"label selector longer than {MAX_SELECTOR_LENGTH} characters")
    reqs = _Parser(text).parse()
    for r in reqs:
        if r.op in (">", "<"):
            raise SelectorError(
                f"label selector {text!r}: operator {r.op!r} is not supported for external metrics"
            )
    return Selector(tuple(reqs))
