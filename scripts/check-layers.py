#!/usr/bin/env python3
"""The module graph keeps the shape src/lib.rs draws: no import circles between modules, and no
module importing from a layer above its own. `make check-layers` (part of `make test`).

The layers are read from the ```text block of lib.rs's crate docs (top layer first; a line that
starts in column 0 names the modules of one layer, comma-separated, before its description).
Imports are the `crate::…`, `super::…` and `self::…` paths in each file outside `#[cfg(test)]`
code, resolved to the longest module that exists. Standard library only.
"""
from __future__ import annotations

import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SRC = os.path.join(ROOT, "src")


def layers() -> dict[str, int]:
    """Top-level module -> layer number (higher = nearer main), from lib.rs's diagram."""
    text = open(os.path.join(SRC, "lib.rs")).read()
    block = re.search(r"//! ```text\n(.*?)//! ```", text, re.S)
    if not block:
        sys.exit("check-layers: no ```text layer diagram in src/lib.rs")
    rows = []
    for line in block.group(1).splitlines():
        body = line[len("//! "):] if line.startswith("//! ") else ""
        if not body or body[0].isspace() or body.startswith("main"):
            continue
        names = re.split(r"\s{2,}", body.strip())[0]
        rows.append([n.strip() for n in names.split(",") if n.strip()])
    return {m: len(rows) - i for i, row in enumerate(rows) for m in row}


def modules() -> dict[str, str]:
    """Module path (`backend::consul::lease`) -> source outside #[cfg(test)] and comments."""
    out = {}
    for root, _, files in os.walk(SRC):
        for f in files:
            if not f.endswith(".rs"):
                continue
            path = os.path.join(root, f)
            name = os.path.relpath(path, SRC)[:-3].replace(os.sep, "::")
            name = name[: -len("::mod")] if name.endswith("::mod") else name
            if name in ("lib", "main"):
                continue
            src = open(path).read()
            src = re.split(r"#\[cfg\(test\)\]", src)[0]
            out[name] = re.sub(r"//.*", "", src)
    return out


def resolve(mods: dict[str, str], here: str, path: str) -> str | None:
    parts = path.split("::")
    if parts[0] == "crate":
        parts = parts[1:]
    elif parts[0] == "super":
        base = here.split("::")
        while parts and parts[0] == "super":
            parts, base = parts[1:], base[:-1]
        parts = base + parts
    elif parts[0] == "self":
        parts = here.split("::") + parts[1:]
    for i in range(len(parts), 0, -1):
        cand = "::".join(parts[:i])
        if cand in mods:
            return cand
    return None


def main() -> int:
    layer = layers()
    mods = modules()
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for m, src in mods.items():
        for path in re.findall(r"\b((?:crate|super|self)(?:::[A-Za-z_]\w*)+)", src):
            t = resolve(mods, m, path)
            # A parent declaring or re-exporting its children is not an import between peers.
            if t and t != m and not m.startswith(t + "::") and not t.startswith(m + "::"):
                edges[m].add(t)
    problems = []
    missing = sorted({m.split("::")[0] for m in mods} - set(layer))
    if missing:
        problems.append(f"modules missing from lib.rs's layer diagram: {missing}")
    for m, targets in sorted(edges.items()):
        for t in sorted(targets):
            a, b = m.split("::")[0], t.split("::")[0]
            if a != b and layer.get(a, 0) < layer.get(b, 0):
                problems.append(f"upward import: {m} -> {t} ({a} sits below {b})")
    color: dict[str, int] = {}
    stack: list[str] = []

    def visit(u: str) -> None:
        color[u] = 1
        stack.append(u)
        for v in sorted(edges[u]):
            if color.get(v) == 1:
                problems.append("import circle: " + " -> ".join(stack[stack.index(v):] + [v]))
            elif not color.get(v):
                visit(v)
        stack.pop()
        color[u] = 2

    sys.setrecursionlimit(10_000)
    for m in sorted(mods):
        if not color.get(m):
            visit(m)
    for p in problems:
        print(f"check-layers: {p}")
    n_edges = sum(len(t) for t in edges.values())
    print(f"check-layers: {len(mods)} modules, {n_edges} imports, {len(layer)} layered top-level "
          f"modules: {'ok' if not problems else f'{len(problems)} problems'}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
