"""Kubernetes label selectors (k8s.io/apimachinery/pkg/labels/selector.go), parsed once, used two ways.

Syntax: comma-separated requirements, each one of `key=value`, `key==value`, `key!=value`,
`key in (v1,v2)`, `key notin (v1,v2)`, `key` (exists), `!key` (does not exist). Keys are qualified names
(optional DNS-subdomain prefix + "/" + name of at most 63 characters); values are at most 63 characters of
`[A-Za-z0-9._-]` starting and ending alphanumeric, or empty. `key>N` / `key<N` parse (as in labels.Parse) but
are refused here: an HPA's metricSelector cannot produce them and PromQL has no matcher for them.

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
_TOKEN = re.compile(r"\s*(==|!=|=|\(|\)|,|!|>|<|[^\s=!(),<>]+)")
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


def _tokenize(text: str) -> list[str]:
    tokens: list[str] = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _TOKEN.match(text, pos)
        if not m:  # pragma: no cover - the token regex matches any non-space character
            raise SelectorError(f"unexpected character at position {pos} in {text!r}")
        tokens.append(m.group(1))
        pos = m.end()
    return tokens


def parse_selector(text: str | None) -> Selector:
    """Parse a label selector string; the empty string selects everything."""
    if text is None or text.strip() == "":
        return Selector()
    if len(text) > MAX_SELECTOR_LENGTH:
        raise SelectorError(f"label selector longer than {MAX_SELECTOR_LENGTH} characters")
    tokens = _tokenize(text)
    reqs: list[Requirement] = []
    i = 0

    def peek(k: int = 0) -> str | None:
        return tokens[i + k] if i + k < len(tokens) else None

    while True:
        tok = peek()
        if tok is None:
            raise SelectorError(f"label selector {text!r}: expected a requirement, found end of input")
        if tok == "!":
            key = peek(1)
            if key is None or key in _OPERATORS:
                raise SelectorError(f"label selector {text!r}: expected a label key after '!'")
            validate_key(key)
            reqs.append(Requirement(key, "!"))
            i += 2
        elif tok in _OPERATORS:
            raise SelectorError(f"label selector {text!r}: expected a label key, found {tok!r}")
        else:
            key = tok
            validate_key(key)
            op = peek(1)
            if op is None or op == ",":
                reqs.append(Requirement(key, "exists"))
                i += 1
            elif op in ("=", "==", "!="):
                value = peek(2)
                if value is None or value == ",":
                    value = ""
                    i += 2
                elif value in _PUNCTUATION:
                    raise SelectorError(
                        f"label selector {text!r}: expected a value after {op!r}, found {value!r}"
                    )
                else:
                    i += 3
                validate_value(value)
                reqs.append(Requirement(key, "!=" if op == "!=" else "=", (value,)))
            elif op in (">", "<"):
                raise SelectorError(
                    f"label selector {text!r}: operator {op!r} is not supported for external metrics"
                )
            elif op in ("in", "notin"):
                i += 2
                if peek() != "(":
                    raise SelectorError(f"label selector {text!r}: expected '(' after {op!r}")
                i += 1
                if peek() == ")":
                    raise SelectorError(
                        f"label selector {text!r}: for {op!r} the set of values can't be empty"
                    )
                values: list[str] = []
                while True:
                    v = peek()
                    if v is None:
                        raise SelectorError(f"label selector {text!r}: missing ')'")
                    if v in (",", ")"):
                        values.append("")  # Kubernetes accepts empty values inside the set
                    else:
                        if v in _PUNCTUATION:
                            raise SelectorError(f"label selector {text!r}: unexpected {v!r} in value set")
                        validate_value(v)
                        values.append(v)
                        i += 1
                        v = peek()
                    if v == ",":
                        i += 1
                        continue
                    if v == ")":
                        i += 1
                        break
                    raise SelectorError(f"label selector {text!r}: expected ',' or ')' in value set")
                reqs.append(Requirement(key, op, tuple(sorted(set(values)))))
            else:
                raise SelectorError(f"label selector {text!r}: unexpected {op!r} after key {key!r}")
        nxt = peek()
        if nxt is None:
            break
        if nxt != ",":
            raise SelectorError(f"label selector {text!r}: expected ',' but found {nxt!r}")
        i += 1
    return Selector(tuple(reqs))


_PUNCTUATION = {"=", "==", "!=", "(", ")", ",", "!", ">", "<"}
# As in the Kubernetes lexer, "in" and "notin" are keywords where a key is expected, plain words as values.
_OPERATORS = _PUNCTUATION | {"in", "notin"}
