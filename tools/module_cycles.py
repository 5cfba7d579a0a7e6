#!/usr/bin/env python3
"""Finds modules of the crate that import each other (issue 9).

Reads every `src/**/*.rs`, turns its `use` declarations and the `crate::`, `super::` and
`self::` paths in its code into edges between modules, and reports each cycle: a strongly
connected component of more than one module. Exits 1 if there is one, 0 otherwise.

Checked three times: with the top-level parts as wholes (`broker::bridge` counts as
`broker`, so `client` may not use anything of `broker` while `broker` uses `client`),
with second-level subtrees as wholes (`broker::router::clients` counts as
`broker::router`, so a subtree as a whole cannot depend on a module that depends on
it), then with every module on its own at any depth (`broker::router::clients` and
`broker::router::will` are two modules, and may not import each other). A path
names the deepest module it reaches (`crate::broker::router::Router` is
`broker::router`, `crate::broker::Config` is `broker`).

The top-level parts also have a direction (LAYERS): the shared protocol pieces
(`codec`, `topic`, `qos`, `tls`) use nothing of `client`, `broker` or `python`, the
client nothing of `broker` or `python`, the broker nothing of `python`. A use against
that direction fails even while it closes no cycle, so the layering cannot be turned
around by removing the other side's uses. A top-level module not in LAYERS is held to
the cycle checks only.

A module using its own ancestor's items (`broker::router` -> `broker`, anything -> the
crate root) is not an edge: a parent declares and re-exports its children, so counting
those would make every parent and child a cycle. Two siblings that use each other are a
cycle, directly or through others.

Comments and string literals are ignored (an intra-doc link is not a dependency), and so
is `pub(in crate::x)`. Test modules count like any code.

Usage: module_cycles.py [SRC_DIR]   (default: src/ next to this script's parent)
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

# Checked at three granularities: top-level parts as wholes (`client` with everything
# under it must not depend on `broker` while `broker` depends on it), second-level
# subtrees as wholes (the same for `broker::router`), then every module on its own, at
# any depth.
DEPTHS = (1, 2, 64)
# The top-level parts from the bottom up: a part may use its own layer's and lower ones,
# never a higher one's. Bridges make the broker a user of the client core, so the client
# sits below it; the Python bindings wrap both.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("codec", "topic", "qos", "tls"),
    ("client",),
    ("broker",),
    ("python",),
)
# Top-level modules to count whole (none today: the codec's and the topic module's own
# files are checked like the broker's).
WHOLE: set[str] = set()


@dataclass
class Module:
    """A module of the crate, by path (`()` is the crate root)."""

    path: tuple[str, ...]
    children: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class Edge:
    source: tuple[str, ...]
    target: tuple[str, ...]
    file: str
    line: int
    text: str


def strip_comments_and_strings(text: str) -> str:
    """Blanks comments, string and char literals, keeping newlines (so line numbers hold)."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            i = j
        elif text.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if text.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif text.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            out.append("\n" * text.count("\n", i, j))
            i = j
        elif (m := re.match(r'b?r(#*)"', text[i : i + 260])) and (
            i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")
        ):
            end = '"' + m.group(1)
            j = text.find(end, i + m.end())
            j = n if j < 0 else j + len(end)
            out.append('""' + "\n" * text.count("\n", i, j))
            i = j
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append('""' + "\n" * text.count("\n", i, j))
            i = j + 1
        elif c == "'":
            # A char literal ('a', '\n', '\u{1F600}'), not a lifetime ('a).
            m = re.match(r"'(\\u\{[0-9a-fA-F]+\}|\\.|[^\\'])'", text[i : i + 12])
            if m:
                out.append("' '")
                i += m.end()
            else:
                out.append(c)
                i += 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def file_module(src: Path, file: Path) -> tuple[str, ...]:
    parts = list(file.relative_to(src).with_suffix("").parts)
    if parts in (["lib"], ["main"]):
        return ()
    if parts[-1] == "mod":
        parts.pop()
    return tuple(parts)


TOKEN = re.compile(r"\s*(::|[{},;*]|r#\w+|\w+)")


def use_paths(tree: str) -> list[list[str]]:
    """Expands a use tree (`crate::a::{b, c::{self, D as E}}`) into its paths."""
    tokens = [t for t in TOKEN.findall(tree) if t]
    pos = 0

    def parse(prefix: list[str]) -> list[list[str]]:
        nonlocal pos
        path = list(prefix)
        out: list[list[str]] = []
        while pos < len(tokens):
            tok = tokens[pos]
            if tok == "::":
                pos += 1
            elif tok == "{":
                pos += 1
                while pos < len(tokens) and tokens[pos] != "}":
                    if tokens[pos] == ",":
                        pos += 1
                        continue
                    out.extend(parse(path))
                pos += 1
                return out
            elif tok in (",", "}", ";"):
                break
            elif tok == "as":
                pos += 2
            elif tok == "self" and path and path == prefix and prefix:
                pos += 1  # `a::{self}` is `a`
            else:
                path.append(tok)
                pos += 1
        out.append(path)
        return out

    return [p for p in parse([]) if p]


USE = re.compile(r"\buse\s+(::)?([^;]*);")
CODE_PATH = re.compile(r"(?<![\w:])((?:crate|super|self)(?:\s*::\s*(?:r#)?\w+)+)")
VISIBILITY = re.compile(r"\bpub\s*\(\s*in\s+[\w:\s]+\)")
INLINE_MOD = re.compile(r"\bmod\s+(r#)?(\w+)\s*\{")
FILE_MOD = re.compile(r"\bmod\s+(r#)?(\w+)\s*;")


class Crate:
    def __init__(self, src: Path) -> None:
        self.src = src
        self.modules: dict[tuple[str, ...], Module] = {(): Module(())}
        self.files: list[tuple[Path, tuple[str, ...], str]] = []
        for file in sorted(src.rglob("*.rs")):
            path = file_module(src, file)
            text = strip_comments_and_strings(file.read_text(encoding="utf-8"))
            self.files.append((file, path, text))
            self.add(path)
            for m in FILE_MOD.finditer(text):
                self.add((*path, m.group(2)))
        for _file, path, text in self.files:
            for scope, _start, _end in self.inline_mods(path, text):
                self.add(scope)

    def add(self, path: tuple[str, ...]) -> None:
        for i in range(1, len(path) + 1):
            self.modules.setdefault(path[:i], Module(path[:i]))
            self.modules[path[: i - 1]].children.add(path[i - 1])

    @staticmethod
    def inline_mods(path: tuple[str, ...], text: str) -> list[tuple[tuple[str, ...], int, int]]:
        """Each inline `mod x { ... }` as (module path, start offset, end offset)."""
        found: list[tuple[tuple[str, ...], int, int]] = []
        stack: list[tuple[tuple[str, ...], int, int]] = []  # (path, start, brace depth)
        depth = 0
        opens = {m.end() - 1: m for m in INLINE_MOD.finditer(text)}
        for i, c in enumerate(text):
            if c == "{":
                depth += 1
                if i in opens:
                    outer = stack[-1][0] if stack else path
                    stack.append(((*outer, opens[i].group(2)), i, depth))
            elif c == "}":
                if stack and stack[-1][2] == depth:
                    scope, start, _ = stack.pop()
                    found.append((scope, start, i))
                depth -= 1
        return found

    def resolve(self, scope: tuple[str, ...], segments: list[str]) -> tuple[str, ...] | None:
        """The deepest module a path reaches, or None if it leaves the crate."""
        segments = [s.removeprefix("r#") for s in segments]
        if not segments:
            return None
        head = segments[0]
        if head == "crate":
            base: tuple[str, ...] = ()
            rest = segments[1:]
        elif head in ("super", "self"):
            base = scope
            rest = segments
            while rest and rest[0] in ("super", "self"):
                if rest[0] == "super":
                    if not base:
                        return None
                    base = base[:-1]
                rest = rest[1:]
        elif head in self.modules[scope].children:
            base, rest = scope, segments  # a child module, named relative to this one
        else:
            return None  # another crate, or a name brought in by another `use`
        for seg in rest:
            if seg in self.modules.get(base, Module(base)).children:
                base = (*base, seg)
            else:
                break
        return base

    def edges(self, depth: int) -> list[Edge]:
        out: list[Edge] = []
        for file, path, text in self.files:
            scopes = self.inline_mods(path, text)
            rel = str(file.relative_to(self.src.parent))
            used: list[tuple[int, list[str]]] = []
            spans: list[tuple[int, int]] = []
            for m in USE.finditer(text):
                spans.append((m.start(), m.end()))
                if m.group(1):
                    continue  # `use ::x`: another crate
                for segs in use_paths(m.group(2)):
                    used.append((m.start(), segs))
            code = VISIBILITY.sub(lambda m: " " * len(m.group(0)), text)
            for m in CODE_PATH.finditer(code):
                if any(a <= m.start() < b for a, b in spans):
                    continue
                segs = [s.strip() for s in m.group(1).split("::")]
                used.append((m.start(), segs))
            lines = text.splitlines()
            for offset, segs in used:
                inner = [(s, a, b) for s, a, b in scopes if a <= offset <= b]
                scope = max(inner, key=lambda x: len(x[0]))[0] if inner else path
                target = self.resolve(scope, segs)
                if target is None:
                    continue
                source, dest = node(scope, depth), node(target, depth)
                if source == dest or dest == source[: len(dest)]:
                    continue  # inside one module, or a module using its ancestor's items
                line = text.count("\n", 0, offset) + 1
                snippet = lines[line - 1].strip()
                out.append(Edge(source, dest, rel, line, snippet))
        return out


def node(path: tuple[str, ...], depth: int) -> tuple[str, ...]:
    return path[:1] if path[:1] and path[0] in WHOLE else path[:depth]


def upward(edges: list[Edge]) -> list[Edge]:
    """The uses of a top-level part by one in a lower layer (LAYERS)."""
    layer = {part: n for n, parts in enumerate(LAYERS) for part in parts}
    out = []
    for e in edges:
        source, target = layer.get(e.source[0]), layer.get(e.target[0])
        if source is not None and target is not None and source < target:
            out.append(e)
    return sorted(set(out), key=lambda e: (e.source, e.target, e.file, e.line))


def name(path: tuple[str, ...]) -> str:
    return "::".join(path) or "crate"


def cycles(edges: list[Edge]) -> list[list[tuple[str, ...]]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    graph: dict[tuple[str, ...], set[tuple[str, ...]]] = {}
    for e in edges:
        graph.setdefault(e.source, set()).add(e.target)
        graph.setdefault(e.target, set())
    index: dict[tuple[str, ...], int] = {}
    low: dict[tuple[str, ...], int] = {}
    on_stack: set[tuple[str, ...]] = set()
    stack: list[tuple[str, ...]] = []
    found: list[list[tuple[str, ...]]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                component = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    component.append(w)
                    if w == v:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return sorted(found)


def main(argv: list[str]) -> int:
    src = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parent.parent / "src"
    if not (src / "lib.rs").is_file() and not (src / "main.rs").is_file():
        print(f"module_cycles: no lib.rs or main.rs in {src}", file=sys.stderr)
        return 2
    crate = Crate(src)
    found: list[list[tuple[str, ...]]] = []
    for depth in DEPTHS:
        edges = crate.edges(depth)
        for component in cycles(edges):
            if component in found:
                continue
            found.append(component)
            members = set(component)
            print(f"cycle: {', '.join(name(m) for m in component)}")
            for e in sorted(set(edges), key=lambda e: (e.source, e.target, e.file, e.line)):
                if e.source in members and e.target in members:
                    print(f"  {name(e.source)} -> {name(e.target)}  {e.file}:{e.line}: {e.text}")
    wrong_way = upward(crate.edges(1))
    for e in wrong_way:
        print(f"upward: {name(e.source)} -> {name(e.target)}  {e.file}:{e.line}: {e.text}")
    if found or wrong_way:
        print(
            f"module_cycles: {len(found)} cycle(s) between modules, "
            f"{len(wrong_way)} use(s) of a higher layer",
            file=sys.stderr,
        )
        return 1
    modules = {e.source for e in edges} | {e.target for e in edges}
    print(f"module_cycles: no cycles ({len(modules)} modules, {len(set(edges))} uses)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
