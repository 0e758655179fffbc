#!/usr/bin/env python3
"""The Python tooling's imports go one way: bench, chaos and tests import kit (and their own
package), never each other; kit imports only kit, with no import circle between its modules;
what runs by path (kit/programs/, scripts/) imports nothing of the project, since no package is
on its path. Every project import must name a module that exists. `make check-imports` (part of
`make test` and `make lint`). Standard library only.

Imports are read with ast from every .py file of the packages (top-level directories with an
__init__.py) and of scripts/, function-level imports included.
"""
from __future__ import annotations

import ast
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = "kit"
BY_PATH = ("kit/programs/", "scripts/")  # run as `python3 [-S] FILE`: the project is not importable


def packages() -> list[str]:
    return sorted(d for d in os.listdir(ROOT)
                  if os.path.isfile(os.path.join(ROOT, d, "__init__.py")))


def sources(pkgs: list[str]) -> list[str]:
    """Repository-relative paths of every .py file of the packages and of scripts/."""
    out = []
    for top in pkgs + ["scripts"]:
        for d, subdirs, files in os.walk(os.path.join(ROOT, top)):
            subdirs[:] = sorted(s for s in subdirs if s != "__pycache__")
            out += [os.path.relpath(os.path.join(d, f), ROOT) for f in sorted(files)
                    if f.endswith(".py")]
    return out


def module_of(path: str) -> str:
    mod = path[:-3].replace(os.sep, ".")
    return mod[:-len(".__init__")] if mod.endswith(".__init__") else mod


def exists(mod: str) -> bool:
    base = os.path.join(ROOT, *mod.split("."))
    return os.path.isfile(base + ".py") or os.path.isfile(os.path.join(base, "__init__.py"))


def imports(path: str) -> list[tuple[int, str, list[str]]]:
    """(line, module, names) of each import; relative imports resolved against the file's package."""
    tree = ast.parse(open(os.path.join(ROOT, path)).read(), path)
    pkg = module_of(path).split(".")
    if not path.endswith("__init__.py"):
        pkg = pkg[:-1]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level:
                base = pkg[:len(pkg) - (node.level - 1)]
                mod = ".".join(base + ([mod] if mod else []))
            out.append((node.lineno, mod, [a.name for a in node.names]))
    return out


def find_circle(edges: dict[str, set[str]]) -> list[str]:
    """One import circle among the modules of `edges`, or []."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(u: str) -> list[str]:
        state[u] = 1
        stack.append(u)
        for v in sorted(edges.get(u, ())):
            if state.get(v) == 1:
                return stack[stack.index(v):] + [v]
            if not state.get(v):
                found = visit(v)
                if found:
                    return found
        stack.pop()
        state[u] = 2
        return []

    for m in sorted(edges):
        if not state.get(m):
            found = visit(m)
            if found:
                return found
    return []


def main() -> int:
    pkgs = packages()
    problems: list[str] = []
    kit_edges: dict[str, set[str]] = {}
    n = 0
    files = sources(pkgs)
    for path in files:
        me = module_of(path)
        own = path.split(os.sep)[0]
        by_path = path.startswith(BY_PATH)
        for line, mod, names in imports(path):
            top = mod.split(".")[0]
            if top not in pkgs:
                continue   # the standard library or a pip package
            n += 1
            where = f"{path}:{line}: {mod}"
            if by_path:
                problems.append(f"{where}: runs by path, so the project is not importable")
                continue
            if own == SHARED and top != SHARED:
                problems.append(f"{where}: {SHARED} imports only {SHARED}")
            elif own != SHARED and top not in (own, SHARED):
                problems.append(f"{where}: {own} imports {SHARED} and {own} only")
            if not exists(mod):
                problems.append(f"{where}: no such module")
                continue
            if own == SHARED:
                # `from kit import checker` names a module; `from kit.procs import log` does not
                targets = [f"{mod}.{x}" for x in names if exists(f"{mod}.{x}")] or [mod]
                for t in targets:
                    if t != SHARED:
                        kit_edges.setdefault(me, set()).add(t)
    circle = find_circle(kit_edges)
    if circle:
        problems.append("import circle in kit: " + " -> ".join(circle))
    for p in problems:
        print(f"check-imports: {p}")
    print(f"check-imports: {len(files)} files, {n} project imports, packages {', '.join(pkgs)}: "
          f"{'ok' if not problems else f'{len(problems)} problems'}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
