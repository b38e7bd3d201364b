"""The CEL subset device selectors are written in, compiled to a function of a `Device` (the forms the
package docstring lists; anything else is `DraUnknown`, never a guess).

Why not a maintained CEL runtime (measured 2026-12-07 on the 2-core dev VM, busy; selectors run per device
per node per request, so per-evaluation cost is what counts):
- `common-expression-language` 0.10.0: its `cel` package imports its command line at import time, so the
  product would carry typer, rich, prompt-toolkit and pygments; not taken further.
- `cel-expr-python` 0.1.3 (cel-cpp bindings, a 51 MB wheel, needs protobuf): right on the driver,
  attribute, `in`, `startsWith` and error-absorption forms tried, and `quantity()` / `compareTo` register as
  custom functions (`function_impls`); but slower: 6-13 us per evaluation with an activation prebuilt per
  device against 1.6-10 us here, 40-60 us when the device is converted to CEL maps per evaluation, and
  230 us against 35 us for `capacity[...].memory.compareTo(quantity("80Gi")) >= 0` (Python callbacks).
  Fidelity needs work the bindings do not offer: no opaque Quantity or semver type (a quantity as a map
  makes `==` structural where the scheduler's Quantity compares values), no lazy map for a missing domain
  (the scheduler's empty map), and errors come back as status strings ("NOT_FOUND: Key not found in map",
  "UNKNOWN: No matching overloads") to be parsed to tell the scheduler's runtime error from a form not
  modelled. So the subset stays, checked against the real scheduler (tests/dra).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from typing import Any

from .pools import Device
from .values import CelRuntimeError, DraUnknown, Version, parse_quantity

_TOKEN = re.compile(
    r"""\s*(?:
    (?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
  | (?P<num>-?[0-9]+(?![0-9.eEuU]))
  | (?P<op>&&|\|\||==|!=|>=|<=|[<>!()\[\].,])
  | (?P<id>[A-Za-z_][A-Za-z0-9_]*)
    )""",
    re.VERBOSE,
)
_ESCAPES = {"n": "\n", "t": "\t", "\\": "\\", '"': '"', "'": "'", "r": "\r"}

# A compiled selector: device -> bool; raises CelRuntimeError for what CEL would evaluate to an error.
Selector = Callable[[Device], bool]


# The API server refuses a device selector's CEL expression longer than this (k8s.io/api/resource/v1
# CELSelectorExpressionMaxLength); whatever claims to be one is not parsed.
CEL_MAX_LENGTH = 10 * 1024
# Nesting (parentheses, `!`, method arguments) deeper than this is not modelled: the parser is recursive, and
# a few hundred levels (well within 10 KiB) raised RecursionError out of the extender's request (issue 28).
CEL_MAX_NESTING = 50
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def _tokens(expr: str) -> list[tuple[str, Any]]:
    if len(expr) > CEL_MAX_LENGTH:
        raise DraUnknown(
            f"CEL expression of {len(expr)} characters: longer than the API allows ({CEL_MAX_LENGTH})"
        )
    out: list[tuple[str, Any]] = []
    pos = 0
    expr = expr.rstrip()
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if m is None or m.end() == pos:
            raise DraUnknown(f"CEL {expr!r}: cannot read {expr[pos : pos + 12]!r}")
        pos = m.end()
        if m.group("str") is not None:
            body = m.group("str")[1:-1]
            if "\\" in body:
                text, i = [], 0
                while i < len(body):
                    if body[i] == "\\":
                        if i + 1 >= len(body) or body[i + 1] not in _ESCAPES:
                            raise DraUnknown(f"CEL {expr!r}: escape not modelled")
                        text.append(_ESCAPES[body[i + 1]])
                        i += 2
                    else:
                        text.append(body[i])
                        i += 1
                body = "".join(text)
            out.append(("str", body))
        elif m.group("num") is not None:
            digits = m.group("num")
            value = int(digits) if len(digits.lstrip("-")) <= 19 else None
            if value is None or not _INT64_MIN <= value <= _INT64_MAX:
                raise DraUnknown(f"CEL {expr[:80]!r}: integer {digits[:24]!r} is not an int64")
            out.append(("int", value))
        elif m.group("op") is not None:
            out.append(("op", m.group("op")))
        else:
            word = m.group("id")
            if word in ("true", "false"):
                out.append(("bool", word == "true"))
            else:
                out.append(("id", word))
    out.append(("end", None))
    return out


class _Err:
    """A CEL error value (errors propagate, but `&&`/`||` absorb them when the other side decides)."""

    __slots__ = ("msg",)

    def __init__(self, msg: str) -> None:
        self.msg = msg


_Eval = Callable[[Device], Any]


class _Parser:
    def __init__(self, expr: str) -> None:
        self.expr = expr
        self.toks = _tokens(expr)
        self.i = 0
        self.depth = 0

    def unknown(self, why: str) -> DraUnknown:
        shown = self.expr if len(self.expr) <= 200 else self.expr[:200] + "..."
        return DraUnknown(f"CEL {shown!r}: {why}")

    def peek(self) -> tuple[str, Any]:
        return self.toks[self.i]

    def take(self, kind: str, value: Any = None) -> Any:
        k, v = self.toks[self.i]
        if k != kind or (value is not None and v != value):
            raise self.unknown(f"expected {value or kind}, got {v!r}")
        self.i += 1
        return v

    def accept(self, value: str) -> bool:
        if self.toks[self.i] == ("op", value):
            self.i += 1
            return True
        return False

    def parse(self) -> _Eval:
        e = self.or_()
        if self.peek()[0] != "end":
            raise self.unknown(f"unexpected {self.peek()[1]!r}")
        return e

    def or_(self) -> _Eval:
        return self._connective("||", self.and_, stop=True)

    def and_(self) -> _Eval:
        return self._connective("&&", self.unary, stop=False)

    def _connective(self, op: str, operand: Any, *, stop: bool) -> _Eval:
        """`a op b op ...` with CEL's error absorption: the first operand equal to `stop` decides (True for
        ||, False for &&), else an error among the operands, else `not stop`."""
        terms = [operand()]
        while self.accept(op):
            terms.append(operand())
        if len(terms) == 1:
            return terms[0]

        def ev(d: Device) -> Any:
            err = None
            for t in terms:
                v = t(d)
                if v is stop:
                    return stop
                if isinstance(v, _Err):
                    err = err or v
                elif v is not (not stop):
                    raise self.unknown(f"{op} of a non-bool")
            return err if err is not None else (not stop)

        return ev

    def unary(self) -> _Eval:
        # every level of nesting passes here (a parenthesis or method argument through or_/and_, a `!` itself)
        self.depth += 1
        try:
            if self.depth > CEL_MAX_NESTING:
                raise self.unknown(f"nested deeper than {CEL_MAX_NESTING} levels (not modelled)")
            return self._unary()
        finally:
            self.depth -= 1

    def _unary(self) -> _Eval:
        if self.accept("!"):
            inner = self.unary()

            def ev(d: Device) -> Any:
                v = inner(d)
                if isinstance(v, _Err):
                    return v
                if not isinstance(v, bool):
                    raise self.unknown("! of a non-bool")
                return not v

            return ev
        return self.relation()

    def relation(self) -> _Eval:
        left = self.primary()
        k, op = self.peek()
        if k == "id" and op == "in":
            self.i += 1
            right = self.primary()

            def ev_in(d: Device) -> Any:
                key, m = left(d), right(d)
                for v in (key, m):
                    if isinstance(v, _Err):
                        return v
                if not isinstance(key, str) or not isinstance(m, dict):
                    raise self.unknown("`in` other than a string key in an attribute map")
                return key in m

            return ev_in
        if k != "op" or op not in ("==", "!=", "<", "<=", ">", ">="):
            return left
        self.i += 1
        right = self.primary()

        def ev(d: Device) -> Any:
            a, b = left(d), right(d)
            for v in (a, b):
                if isinstance(v, _Err):
                    return v
            if type(a) is not type(b) or not isinstance(a, str | int | bool):
                raise self.unknown(f"comparison of {type(a).__name__} and {type(b).__name__}")
            if op == "==":
                return a == b
            if op == "!=":
                return a != b
            if not isinstance(a, int) or isinstance(a, bool):
                raise self.unknown(f"{op} on {type(a).__name__}")
            return {"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[op]

        return ev

    def primary(self) -> _Eval:
        k, v = self.peek()
        if k == "op" and v == "(":
            self.i += 1
            e = self.or_()
            self.take("op", ")")
            return self.postfix(e)
        if k in ("str", "int", "bool"):
            self.i += 1
            return self.postfix(lambda d, v=v: v)
        if k == "id" and v == "device":
            self.i += 1
            self.take("op", ".")
            what = self.take("id")
            if what == "driver":
                return self.postfix(lambda d: d.driver)
            if what in ("attributes", "capacity"):
                self.take("op", "[")
                domain = self.take("str")
                self.take("op", "]")
                base: _Eval = (
                    (lambda d: d.attributes.get(domain, {}))
                    if what == "attributes"
                    else (lambda d: d.capacity.get(domain, {}))
                )
                return self.postfix(base)
            raise self.unknown(f"device.{what} not modelled")
        if k == "id" and v == "quantity":
            self.i += 1
            self.take("op", "(")
            q = parse_quantity(self.take("str"))
            self.take("op", ")")
            return self.postfix(lambda d: _Qty(q))
        raise self.unknown(f"{v!r} not modelled")

    def postfix(self, base: _Eval) -> _Eval:
        while True:
            if self.accept("["):
                key = self.take("str")
                self.take("op", "]")
                base = self._select(base, key)
            elif self.accept("."):
                name = self.take("id")
                if self.peek() == ("op", "("):
                    base = self._method(base, name)
                else:
                    base = self._select(base, name)
            else:
                return base

    def _select(self, base: _Eval, key: str) -> _Eval:
        def ev(d: Device) -> Any:
            m = base(d)
            if isinstance(m, _Err):
                return m
            if not isinstance(m, dict):
                raise self.unknown("field selection on a non-map")
            if key not in m:
                return _Err(f"no such key: {key}")
            v = m[key]
            if isinstance(v, Fraction):
                return _Qty(v)
            if isinstance(v, Version):
                raise self.unknown(f"version attribute {key} (semver) not modelled")
            return v

        return ev

    def _method(self, base: _Eval, name: str) -> _Eval:
        self.take("op", "(")
        arg = self.or_()
        self.take("op", ")")
        if name not in ("compareTo", "isGreaterThan", "isLessThan", "startsWith", "endsWith", "contains"):
            raise self.unknown(f"method {name}() not modelled")

        def ev(d: Device) -> Any:
            a, b = base(d), arg(d)
            for v in (a, b):
                if isinstance(v, _Err):
                    return v
            if name in ("startsWith", "endsWith", "contains"):
                if not isinstance(a, str) or not isinstance(b, str):
                    raise self.unknown(f"{name}() on non-strings")
                fn = {"startsWith": a.startswith, "endsWith": a.endswith, "contains": a.__contains__}
                return fn[name](b)
            if not isinstance(a, _Qty) or not isinstance(b, _Qty):
                raise self.unknown(f"{name}() on non-quantities")
            if name == "compareTo":
                return (a.v > b.v) - (a.v < b.v)
            return a.v > b.v if name == "isGreaterThan" else a.v < b.v

        return self.postfix(ev)


@dataclass(frozen=True, slots=True)
class _Qty:
    v: Fraction


@lru_cache(maxsize=1024)
def _compile(expr: str) -> _Eval | DraUnknown:
    try:
        return _Parser(expr).parse()
    except DraUnknown as exc:
        return exc


def compile_selector(expr: str) -> Selector:
    """A selector's CEL expression as a function of a device. Raises DraUnknown for forms not modelled
    (at compile time, or at evaluation for type mismatches); the function raises CelRuntimeError where CEL
    itself would give an error (a missing attribute)."""
    ev = _compile(expr)
    if isinstance(ev, DraUnknown):
        raise ev

    def run(d: Device) -> bool:
        v = ev(d)
        if isinstance(v, _Err):
            raise CelRuntimeError(f"{expr!r} on {d.name}: {v.msg}")
        if not isinstance(v, bool):
            raise DraUnknown(f"CEL {expr!r}: result is not a bool")
        return v

    return run


def _selectors(obj: Mapping[str, Any] | None, what: str) -> list[Selector]:
    out = []
    for i, s in enumerate((obj or {}).get("selectors") or []):
        cel = (s or {}).get("cel") or {}
        expr = cel.get("expression")
        if not isinstance(expr, str):
            raise DraUnknown(f"{what}: selector #{i} is not a CEL expression")
        out.append(compile_selector(expr))
    return out
