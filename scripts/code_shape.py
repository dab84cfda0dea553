"""The shape of the code, measured: modules per package, function lengths, import
cycles between our modules, and uses of other libraries' private names.

`make check` prints it and fails when a limit is broken (LIMITS), so the layout the
README and ARCHITECTURE.md describe stays true as the code grows.

    python scripts/code_shape.py [--root DIR] [--no-limits]
"""

from __future__ import annotations

import argparse
import ast
import re
import statistics
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

PACKAGES = ("fsp", "training", "alerting", "monitoring", "service", "flows")
LIMITS = {"median_function_lines": 12, "max_function_lines": 60, "import_cycles": 0}
PRIVATE_IMPORT = re.compile(r"^\s*(?:from|import)\s+([\w.]*\._\w+|_\w+)", re.M)
PRIVATE_ATTRIBUTE = re.compile(
    r"\b(?:getattr\([^,]+,\s*[\"']_[a-z]\w*[\"']|object\.__setattr__"
    r"|(?<![\w.])(?!self\.|cls\.)[a-z]\w*\._[a-z]\w*(?=[.(\s:,)\]]))"
)
ADAPTER_MARK = "# private-api:"  # a line naming the private thing an adapter touches


@dataclass(frozen=True)
class Function:
    """One function or method: where it is and how many lines it spans."""

    module: str
    name: str
    lines: int


def modules(root: Path) -> Iterator[tuple[str, Path]]:
    """(dotted name, path) of every module of our packages."""
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            yield ".".join(p for p in parts if p != "__init__") or package, path


def functions(name: str, tree: ast.AST) -> Iterator[Function]:
    """Every def in a module, nested ones included, with its span in lines."""
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            span = (node.end_lineno or node.lineno) - node.lineno + 1
            yield Function(name, node.name, span)


def imported(name: str, tree: ast.AST, ours: set[str]) -> set[str]:
    """Our modules that `name` imports (any depth: function-local imports count too)."""
    found: set[str] = set()
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        found.update(t for t in targets if t in ours and t != name)
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while (member := stack.pop()) != node:
                group.append(member)
            group.append(node)
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def private_uses(text: str) -> list[str]:
    """Imports of a private module or name of another library, private attributes read
    by name, and writes around pydantic's guard (object.__setattr__)."""
    hits = [m.group(1) for m in PRIVATE_IMPORT.finditer(text) if m.group(1) != "__future__"]
    code = PRIVATE_IMPORT.sub("", text)  # each import counted once, above
    hits += PRIVATE_ATTRIBUTE.findall(code)
    return hits


def measure(root: Path) -> dict:
    """Every figure the report prints."""
    found = dict(modules(root))
    trees = {name: ast.parse(path.read_text(), str(path)) for name, path in found.items()}
    graph = {name: imported(name, tree, set(found)) for name, tree in trees.items()}
    funcs = [f for name, tree in trees.items() for f in functions(name, tree)]
    adapters = [n for n, p in found.items() if ADAPTER_MARK in p.read_text()]
    private = {n: private_uses(p.read_text()) for n, p in found.items() if n not in adapters}
    per_package = {pkg: sum(1 for n in found if n.split(".")[0] == pkg) for pkg in PACKAGES}
    return {
        "modules_per_package": per_package,
        "functions": len(funcs),
        "median_function_lines": statistics.median(f.lines for f in funcs),
        "max_function_lines": max(f.lines for f in funcs),
        "longest": sorted(funcs, key=lambda f: -f.lines)[:8],
        "import_cycles": cycles(graph),
        "private_api_uses": {n: hits for n, hits in private.items() if hits},
        "adapter_modules": adapters,
    }


def report(figures: dict) -> list[str]:
    """The human-readable report, one line per figure."""
    lines = [
        "modules per package: "
        + ", ".join(f"{pkg} {n}" for pkg, n in figures["modules_per_package"].items())
    ]
    lines.append(
        f"functions: {figures['functions']}, median length "
        f"{figures['median_function_lines']} lines, longest {figures['max_function_lines']}"
    )
    lines += [f"  {f.lines:4d}  {f.module}.{f.name}" for f in figures["longest"]]
    lines.append(f"import cycles: {len(figures['import_cycles'])} {figures['import_cycles'] or ''}")
    uses = figures["private_api_uses"]
    lines.append(f"private-API uses outside adapters: {sum(len(v) for v in uses.values())}")
    lines += [f"  {module}: {', '.join(hits)}" for module, hits in uses.items()]
    lines.append(f"adapter modules: {', '.join(figures['adapter_modules']) or 'none'}")
    return lines


def broken_limits(figures: dict) -> list[str]:
    """Each limit the code breaks, as a sentence."""
    broken = []
    if figures["median_function_lines"] > LIMITS["median_function_lines"]:
        broken.append(
            f"median function length {figures['median_function_lines']} > "
            f"{LIMITS['median_function_lines']}"
        )
    if figures["max_function_lines"] > LIMITS["max_function_lines"]:
        broken.append(
            f"a function of {figures['max_function_lines']} lines > {LIMITS['max_function_lines']}"
        )
    if len(figures["import_cycles"]) > LIMITS["import_cycles"]:
        broken.append(f"{len(figures['import_cycles'])} import cycle(s)")
    return broken


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent)
    parser.add_argument("--no-limits", action="store_true", help="report only, never fail")
    args = parser.parse_args(argv)
    figures = measure(args.root)
    print("\n".join(report(figures)))
    broken = [] if args.no_limits else broken_limits(figures)
    for sentence in broken:
        print(f"code shape: {sentence}", file=sys.stderr)
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
