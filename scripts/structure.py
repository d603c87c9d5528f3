#!/usr/bin/env python3
"""The shape of src/: import cycles between its modules (files), and files and functions past the
size the style guide asks for (docs/architecture.md, "Layout").

    python3 scripts/structure.py            # report; exit 1 on an import cycle
    python3 scripts/structure.py --strict   # also exit 1 on a file over 400 lines or a function over 50

Every `crate::…`, `super::…` and `self::…` path in a file's code (comments and strings left out)
is an edge to the deepest module file it names (a name a module only re-exports is followed to
where it is defined). Cycles are the strongly connected components of that graph with more than
one file. Left out: `src/main.rs` (its own crate), re-exports (`pub use`), unit tests, and the
edges between a module and its own parent (`mod.rs`, `lib.rs`): a parent declares its children
and names what they define, and a child may take the parent's shared types (an `impl` split
over several files, as in `node/`), which is how Rust lays a module out, not a cycle of layers.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"
MAX_FILE_LINES = 400
MAX_FN_LINES = 50

PATH = re.compile(r"(?<![\w:])([a-z_][a-z0-9_]*)((?:::[A-Za-z_][A-Za-z0-9_]*)+)")
FN = re.compile(r"^(\s*)(?:pub(?:\([a-z]+\))? )?(?:async )?(?:unsafe )?fn (\w+)")


def module_of(path: Path) -> tuple[str, ...]:
    """The module path of a source file: src/a/b.rs -> (a, b); src/a/mod.rs -> (a,)."""
    parts = path.relative_to(SRC).with_suffix("").parts
    if parts[-1] in ("mod", "lib"):
        parts = parts[:-1]
    return tuple(parts)


def file_of(module: tuple[str, ...]) -> Path | None:
    """The file that holds a module, if it is one."""
    if not module:
        return SRC / "lib.rs"
    for candidate in (SRC.joinpath(*module).with_suffix(".rs"), SRC.joinpath(*module, "mod.rs")):
        if candidate.exists():
            return candidate
    return None


def code_only(text: str) -> str:
    """The text without comments and string literals (a path in a doc comment is not an import)."""
    text = re.sub(r"//[^\n]*", "", text)
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return re.sub(r'"(?:\\.|[^"\\])*"', '""', text)


def use_paths(code: str) -> list[str]:
    """Every path of a `use` tree, flattened: `use crate::{a::{b, c}, d};` -> crate::a::b, …
    A `pub use` re-exports (a module showing its children's names), it depends on nothing."""
    paths = []
    for tree in re.findall(r"(?<![\w)])use\s+([^;]+);", code):
        paths.extend(flatten(re.sub(r"\s+", "", tree)))
    return paths


def without_reexports(code: str) -> str:
    """The code without its `pub use …;` statements and its unit tests (`#[cfg(test)] mod …`,
    last in a file: their `super::` is the file itself)."""
    code = re.split(r"#\[cfg\(test\)\]\s*mod\s", code)[0]
    return re.sub(r"\bpub(?:\([a-z]+\))?\s+use\s+[^;]+;", "", code)


def flatten(tree: str, prefix: str = "") -> list[str]:
    """The paths a `use` tree stands for."""
    if "{" not in tree:
        return [prefix + tree.split(" as ")[0]]
    head, rest = tree.split("{", 1)
    inner = rest[: rest.rindex("}")]
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(inner):
        depth += ch == "{"
        depth -= ch == "}"
        if ch == "," and depth == 0:
            parts.append(inner[start:i])
            start = i + 1
    parts.append(inner[start:])
    return [p for part in parts if part for p in flatten(part, prefix + head)]


REEXPORTS: dict[Path, dict[str, str]] = {}


def reexports(path: Path) -> dict[str, str]:
    """The names a file re-exports (`pub use a::b::C;` -> {"C": "a::b::C"})."""
    if path not in REEXPORTS:
        code = code_only(path.read_text())
        found = {}
        for tree in re.findall(r"\bpub(?:\([a-z]+\))?\s+use\s+([^;]+);", code):
            for full in flatten(re.sub(r"\s+", "", tree)):
                found[full.split("::")[-1]] = full
        REEXPORTS[path] = found
    return REEXPORTS[path]


def resolve(here: tuple[str, ...], path: str, depth: int = 0) -> Path | None:
    """The deepest module file a path names, seen from the module `here`; a name the file only
    re-exports is followed to where it is defined."""
    segments = path.split("::")
    root, rest = segments[0], [s for s in segments[1:] if s and s != "self" and s != "*"]
    if root == "crate":
        base: tuple[str, ...] = ()
    elif root == "self":
        base = here
    elif root != "super":
        # A child module named from its parent (`use dispatch::X` in a mod.rs), else an external
        # crate.
        if file_of(here + (root,)) is None:
            return None
        base, rest = here, [root] + rest
    else:  # super, possibly repeated
        base = here
        while segments and segments[0] == "super":
            base = base[:-1]
            segments = segments[1:]
        rest = [s for s in segments if s and s != "self" and s != "*"]
    best, module = file_of(base), base
    for i in range(len(rest)):
        found = file_of(base + tuple(rest[: i + 1]))
        if found is None:
            following = reexports(best).get(rest[i]) if best is not None else None
            if following and depth < 8:
                return resolve(module, following, depth + 1) or best
            break
        best, module = found, base + tuple(rest[: i + 1])
    return best


def parent_and_child(a: Path, b: Path) -> bool:
    """Whether one of the two files is the other's parent module."""
    ma, mb = module_of(a), module_of(b)
    return (len(ma) == len(mb) + 1 and ma[:-1] == mb) or (len(mb) == len(ma) + 1 and mb[:-1] == ma)


def graph() -> dict[Path, set[Path]]:
    """File -> the files it takes names from."""
    edges: dict[Path, set[Path]] = {}
    for path in sorted(SRC.rglob("*.rs")):
        if path.name == "main.rs" and path.parent == SRC:
            continue
        code = without_reexports(code_only(path.read_text()))
        here = module_of(path)
        targets = set()
        for p in use_paths(code) + ["".join(m) for m in PATH.findall(code)]:
            target = resolve(here, p)
            if target is not None and target != path and not parent_and_child(path, target):
                targets.add(target)
        edges[path] = targets
    return edges


def cycles(edges: dict[Path, set[Path]]) -> list[list[Path]]:
    """Strongly connected components with more than one file (Tarjan)."""
    index: dict[Path, int] = {}
    low: dict[Path, int] = {}
    stack: list[Path] = []
    on_stack: set[Path] = set()
    found: list[list[Path]] = []
    counter = [0]
    sys.setrecursionlimit(10_000)

    def visit(v: Path) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
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

    for v in edges:
        if v not in index:
            visit(v)
    return found


def long_functions(path: Path) -> list[tuple[str, int]]:
    """Functions longer than MAX_FN_LINES: (name, lines), by indentation of the closing brace."""
    lines = path.read_text().split("\n")
    out = []
    for i, line in enumerate(lines):
        m = FN.match(line)
        if not m:
            continue
        indent = len(m.group(1))
        j = i
        while j < len(lines) and not lines[j].rstrip().endswith(("{", ";")):
            j += 1
        if j >= len(lines) or lines[j].rstrip().endswith(";"):
            continue
        k = j + 1
        while k < len(lines) and not (lines[k].startswith(" " * indent + "}") and len(lines[k]) - len(lines[k].lstrip()) == indent):
            k += 1
        if k - i + 1 > MAX_FN_LINES:
            out.append((m.group(2), k - i + 1))
    return out


def main() -> int:
    strict = "--strict" in sys.argv[1:]
    edges = graph()
    found = cycles(edges)
    rel = lambda p: str(p.relative_to(SRC.parent))  # noqa: E731
    for component in found:
        print("import cycle:", " <-> ".join(rel(p) for p in component))
    big = [(rel(p), n) for p in sorted(SRC.rglob("*.rs")) if (n := len(p.read_text().split("\n")) - 1) > MAX_FILE_LINES]
    long = [(rel(p), name, n) for p in sorted(SRC.rglob("*.rs")) for name, n in long_functions(p)]
    for path, n in big:
        print(f"file over {MAX_FILE_LINES} lines: {path} ({n})")
    for path, name, n in long:
        print(f"function over {MAX_FN_LINES} lines: {path}: {name} ({n})")
    print(f"structure: {len(edges)} modules, {sum(map(len, edges.values()))} imports between them, "
          f"{len(found)} import cycles, {len(big)} files over {MAX_FILE_LINES} lines, "
          f"{len(long)} functions over {MAX_FN_LINES} lines")
    if found or (strict and (big or long)):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
