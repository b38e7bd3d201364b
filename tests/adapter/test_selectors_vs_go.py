"""The adapter's label-selector parser against the real `labels.Parse` of k8s.io/apimachinery v0.37.2 (the
version Kubernetes v1.37.2 uses), run as a Go program of ours: tests/kube/cmd/labelsparse, built by
`scripts/labelsparse.sh bin` in the tests/kube module, whose go.mod pins apimachinery with the rest of
v1.37.2.

Thousands of generated selectors (every operator, qualified keys with prefixes, empty values in every
position, whitespace of every kind labels.Parse knows and some it does not, keys, values and selectors near
their length limits, a share of malformed ones) against dozens of label sets, in one Go process fed JSON
lines: both sides
must accept and reject the same selectors, read the same requirements and match the same label sets.

The only differences allowed are the adapter's documented refusals (adapter/selectors.py, `parse_selector`),
where labels.Parse accepts and the adapter answers 400; even there the parser itself (`_Parser`) must read
what Go reads:
- `>` and `<` (REFUSED_GT_LT): an HPA's metricSelector cannot produce them and PromQL has no matcher for them;
- selectors longer than MAX_SELECTOR_LENGTH (4096) characters (REFUSED_LENGTH): labels.Parse has no limit.
"""

from __future__ import annotations

import json
import random
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from toposcale.adapter.selectors import MAX_SELECTOR_LENGTH, SelectorError, _Parser, parse_selector

from lab.builds import labelsparse_bin

ROOT = Path(__file__).resolve().parents[2]
KUBE_GO_MOD = ROOT / "tests" / "kube" / "go.mod"

SEED = 20261207
N_GENERATED = 3300
N_LONG = 60
N_LABEL_SETS = 64

REFUSED_GT_LT = "not supported for external metrics"
REFUSED_LENGTH = f"longer than {MAX_SELECTOR_LENGTH} characters"

# --- what the generator draws from ---

PREFIX_253 = ".".join(["p" * 63, "q" * 63, "r" * 63, "s" * 61])  # a DNS subdomain of exactly 253 characters
assert len(PREFIX_253) == 253
# Keys the label sets carry, so that selectors on them match some sets and not others.
SET_KEYS = [
    "app", "tier", "x", "in", "notin", "n", "example.com/model", "a.b-c.d/Name_1", "k8s.io/z9",
    "K" * 63, f"{PREFIX_253}/k",
]
# Valid keys no label set carries, and keys labels.Parse refuses (name > 63, prefix > 253, case, shape).
OTHER_KEYS = ["missing", "0.1.2.domain/99", "A-b_c.D", "a" * 62 + "z"]
BAD_KEYS = [
    "K" * 64, f"{PREFIX_253}x/k", "-bad", "bad-", "_x", "x_", "Bad.Prefix/x", "/x", "x/", "a/b/c", "a_b/c",
    "x*y", "é", "a..b/c", ".a/b", "a/-b", "a/" + "b" * 64, "x:y",
]
VALUES = ["", "a", "qwen", "vllm", "c.d", "A_b-1", "in", "notin", "0", "7", "12", "v" * 63, "Z"]
BAD_VALUES = ["v" * 64, "-a", "a-", "a/b", "é", "a*b", "_a", ".a", "a:b"]
INTEGERS = ["0", "7", "12", "007", "9223372036854775807", "9223372036854775808", "-1", "+1", "1.5", "", "a",
            "-9223372036854775808"]
# Whitespace labels.Parse skips (space, tab, CR, LF), and characters it does not (vertical tab, form feed,
# no-break space, em space): those end up inside a word.
WS = [" ", "  ", "\t", "\n", "\r\n", " \t ", "\n\t", "\r"]
NOT_WS = ["\x0b", "\x0c", "\u00a0", "\u2003"]
MUTATION_CHARS = "=!(),<> \t\n\r,a-/._\x00Zé"


def _ws(rng: random.Random, p_none: float = 0.5) -> str:
    r = rng.random()
    if r < p_none:
        return ""
    if r < 0.995:
        return rng.choice(WS)
    return rng.choice(NOT_WS)


def _key(rng: random.Random) -> str:
    r = rng.random()
    if r < 0.8:
        return rng.choice(SET_KEYS)
    if r < 0.95:
        return rng.choice(OTHER_KEYS)
    return rng.choice(BAD_KEYS)


def _value(rng: random.Random) -> str:
    r = rng.random()
    if r < 0.22:
        return ""
    if r < 0.96:
        return rng.choice(VALUES)
    return rng.choice(BAD_VALUES)


def _value_set(rng: random.Random) -> str:
    """A parenthesised value list: empty values anywhere (`(a,,)`, `(,,)`, `(, ,)`, `()`), whitespace around
    every item."""
    shape = rng.random()
    if shape < 0.08:
        return "(" + _ws(rng) + ")"
    n = rng.randint(1, 5)
    items = [_value(rng) if rng.random() < 0.7 else "" for _ in range(n)]
    return "(" + ",".join(_ws(rng, 0.6) + v + _ws(rng, 0.6) for v in items) + ")"


def _requirement(rng: random.Random) -> str:
    key = _key(rng)
    op = rng.choice(["=", "==", "!=", "in", "notin", "exists", "!", ">", "<"])
    if op == "exists":
        return key
    if op == "!":
        return "!" + _ws(rng, 0.7) + key
    if op in ("in", "notin"):
        before = rng.choice(WS) if rng.random() < 0.97 else ""  # `appin (a)` is one word: malformed
        return key + before + op + _ws(rng) + _value_set(rng)
    value = rng.choice(INTEGERS) if op in (">", "<") else _value(rng)
    return key + _ws(rng, 0.7) + op + _ws(rng, 0.7) + value


def _selector(rng: random.Random) -> str:
    n = rng.choices([1, 2, 3, 4, 5], weights=[30, 30, 20, 12, 8])[0]
    text = _ws(rng, 0.8) + ",".join(_ws(rng, 0.7) + _requirement(rng) + _ws(rng, 0.7) for _ in range(n))
    return text + _ws(rng, 0.8)


def _mutate(rng: random.Random, text: str) -> str:
    """One edit of the kind a hand-typed or truncated selector has."""
    if not text:
        return rng.choice(MUTATION_CHARS)
    i = rng.randrange(len(text))
    kind = rng.randrange(6)
    if kind == 0:
        return text[:i] + text[i + 1:]  # a character dropped
    if kind == 1:
        return text[:i] + rng.choice(MUTATION_CHARS) + text[i:]  # one inserted
    if kind == 2:
        return text[:i]  # cut short
    if kind == 3 and i + 1 < len(text):
        return text[:i] + text[i + 1] + text[i] + text[i + 2:]  # two swapped
    if kind == 4:
        j = rng.randrange(i, len(text) + 1)
        return text[:j] + text[i:j] + text[j:]  # a stretch doubled
    return text[:i] + rng.choice(MUTATION_CHARS) + text[i + 1:]  # one replaced


def _long(rng: random.Random, target: int) -> str:
    """Requirements joined until the selector is about `target` characters long."""
    parts: list[str] = []
    while len(",".join(parts)) < target - 140:
        key = rng.choice(SET_KEYS[:7])
        if rng.random() < 0.3:
            parts.append(f"{key} {rng.choice(['in', 'notin'])} ({rng.choice(VALUES)},{rng.choice(VALUES)})")
        else:
            parts.append(f"{key}{rng.choice(['!=', '=', '=='])}{rng.choice(VALUES)}")
    text = ",".join(parts)
    while len(text) < target:
        text += "," + "x" * min(63, max(1, target - len(text) - 1))
    return text[:target] if text[:target][-1] not in ",!=(" else text


# The issue's own findings and the empty-value shapes around them, always in the run.
FIXED = [
    "app in (qwen,,)", "app in (,,)", "x notin (a, ,)", "x in (a,,,b)", "x in (,,,)", "x in (a,,)",
    "x notin (,,a,,)", "x in ( , , )", "x in (\t,\n,\r)", "x in (a, , ,b,)", "x in (,a,,b,,)",
    "x in (a,,", "x in (,,", "x in (a,,b", "x in (,", "x in (a,,)b", "x in (a,,),", "x in (,,) ,y",
    "x in ()", "x notin ( )", "x in (,)", "x=,y!=", "x==", "!x,!y", "x>1", "x<-1", "x>", "x in (a)(b)",
    "", " ", " \t\r\n", ",", "!", "x!==a", "x=!a", "in(a)", "x in in (a)", "x in (in,notin,)", "x><1",
]


def generate_selectors() -> list[str]:
    rng = random.Random(SEED)
    out = list(FIXED)
    for _ in range(N_GENERATED):
        text = _selector(rng)
        if rng.random() < 0.22:
            for _ in range(rng.choice([1, 1, 2, 3])):
                text = _mutate(rng, text)
        out.append(text)
    for i in range(N_LONG):  # around the adapter's limit: some under, some over, each side of 4096
        out.append(_long(rng, MAX_SELECTOR_LENGTH - 30 + i))
    return out


def generate_label_sets() -> list[dict[str, str]]:
    rng = random.Random(SEED + 1)
    sets: list[dict[str, str]] = [{}, {"app": "qwen"}, {"app": ""}, {"x": ""}, {"x": "a"}, {"in": "notin"},
                                  {"notin": "in"}, {"app": "qwen", "x": "a"}]
    label_values = [v for v in VALUES] + ["9223372036854775807", "-5", "x"]
    while len(sets) < N_LABEL_SETS:
        sets.append({k: rng.choice(label_values) for k in SET_KEYS if rng.random() < 0.45})
    return sets


# --- the Go side ---


def go_binary() -> str:
    """scripts/labelsparse.sh bin (seconds, cached); one that cannot be had fails the test with the reason."""
    return str(labelsparse_bin())


def run_go(selectors: list[str], label_sets: list[dict[str, str]]) -> tuple[dict[str, str], list[dict]]:
    lines = [json.dumps({"versions": True}), json.dumps({"labelsets": label_sets})]
    lines += [json.dumps({"selector": s}) for s in selectors]
    r = subprocess.run([go_binary()], input="\n".join(lines) + "\n", capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    answers = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(answers) == len(lines), (len(answers), len(lines), r.stderr)
    assert answers[1] == {"labelsets": len(label_sets)}
    return answers[0], answers[2:]


# --- the comparison ---


@dataclass
class Python:
    ok: bool
    error: str
    requirements: list[tuple[str, str, tuple[str, ...]]]  # what the parser proper read (None: it refused)
    parsed: bool
    matched: list[int]


def python_side(text: str, label_sets: list[dict[str, str]]) -> Python:
    try:
        reqs = _Parser(text).parse()  # the parser proper, before the adapter's refusals
        parsed = True
    except SelectorError:
        reqs, parsed = [], False
    norm = sorted((r.key, r.op, tuple(r.values)) for r in reqs)
    try:
        sel = parse_selector(text)
    except SelectorError as exc:
        return Python(False, str(exc), norm, parsed, [])
    return Python(True, "", norm, parsed, [i for i, s in enumerate(label_sets) if sel.matches(s)])


def go_requirements(answer: dict[str, Any]) -> list[tuple[str, str, tuple[str, ...]]]:
    return sorted((k, op, tuple(values or ())) for k, op, values in answer.get("requirements") or [])


def compare(text: str, go: dict[str, Any], py: Python) -> str | None:
    """None when the two agree (a documented refusal counts as agreeing), else what differs."""
    if go["ok"] and py.parsed and go_requirements(go) != py.requirements:
        return f"read differently: Go {go_requirements(go)}, adapter {py.requirements}"
    if go["ok"] and py.ok:
        if go["matched"] != py.matched:
            return f"matched sets: Go {go['matched']}, adapter {py.matched}"
        return None
    if not go["ok"] and not py.ok:
        return "Go refused, the adapter's parser read it (then refused it otherwise)" if py.parsed else None
    if not go["ok"]:
        return f"Go refused ({go['error']}), the adapter accepted"
    # Go accepted, the adapter refused: only its documented refusals
    gt_lt = any(op in (">", "<") for _, op, _ in go_requirements(go))
    if REFUSED_GT_LT in py.error and gt_lt and py.parsed:
        return None
    if REFUSED_LENGTH in py.error and len(text) > MAX_SELECTOR_LENGTH and py.parsed:
        return None
    return f"Go accepted, the adapter refused: {py.error}"


def test_go_program_is_apimachinery_of_kubernetes_1_37_2() -> None:
    versions, _ = run_go([], [])
    mod = KUBE_GO_MOD.read_text()
    assert re.search(r"^\tk8s\.io/kubernetes v1\.37\.2$", mod, re.M), "tests/kube/go.mod: not v1.37.2"
    pinned = re.search(r"^\tk8s\.io/apimachinery => k8s\.io/apimachinery (\S+)$", mod, re.M)
    assert pinned and pinned.group(1) == "v0.37.2"
    assert versions["apimachinery"] == "v0.37.2", versions


def test_selectors_agree_with_labels_parse() -> None:
    selectors = generate_selectors()
    label_sets = generate_label_sets()
    assert len(selectors) >= 3000 and len(label_sets) >= 48
    _, answers = run_go(selectors, label_sets)

    disagreements = []
    stats = {"both accept": 0, "both refuse": 0, REFUSED_GT_LT: 0, REFUSED_LENGTH: 0}
    ops_accepted: set[str] = set()
    matched_counts: set[int] = set()
    for text, go in zip(selectors, answers, strict=True):
        py = python_side(text, label_sets)
        why = compare(text, go, py)
        if why is not None:
            disagreements.append(f"{text!r}: {why}")
            continue
        if go["ok"] and py.ok:
            stats["both accept"] += 1
            ops_accepted.update(op for _, op, _ in py.requirements)
            matched_counts.add(len(py.matched))
        elif not go["ok"]:
            stats["both refuse"] += 1
        else:
            stats[REFUSED_GT_LT if REFUSED_GT_LT in py.error else REFUSED_LENGTH] += 1
    assert not disagreements, (f"{len(disagreements)} of {len(selectors)} selectors differ from labels.Parse "
                               "(first 25):\n" + "\n".join(disagreements[:25]))

    # The run covers what it claims to: each outcome in number, every operator accepted, the matched sets
    # ranging from none to most of the label sets.
    assert stats["both accept"] >= 0.35 * len(selectors), stats
    assert stats["both refuse"] >= 0.15 * len(selectors), stats
    assert stats[REFUSED_GT_LT] >= 20 and stats[REFUSED_LENGTH] >= 10, stats
    assert ops_accepted >= {"=", "!=", "in", "notin", "exists", "!"}, ops_accepted
    assert 0 in matched_counts and max(matched_counts) >= N_LABEL_SETS // 2, sorted(matched_counts)
    long_accepted = [s for s, a in zip(selectors, answers, strict=True)
                     if a["ok"] and MAX_SELECTOR_LENGTH - 30 <= len(s) <= MAX_SELECTOR_LENGTH]
    assert long_accepted, "no accepted selector near the length limit"
    ws_accepted = [s for s, a in zip(selectors, answers, strict=True)
                   if a["ok"] and "\t" in s and "\n" in s]
    assert ws_accepted, "no accepted selector with both tabs and newlines"


def test_the_issues_selectors_are_accepted_as_go_reads_them() -> None:
    """labels.Parse accepts two empty values before `)`; the adapter answered 400 (issue 24)."""
    labels = [{"app": "qwen"}, {"app": ""}, {}, {"x": "a"}, {"x": ""}]
    for text, matched in [("app in (qwen,,)", [0, 1]), ("app in (,,)", [1]), ("x notin (a, ,)", [0, 1, 2])]:
        sel = parse_selector(text)
        assert [i for i, s in enumerate(labels) if sel.matches(s)] == matched, text
