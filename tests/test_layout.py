"""The package's map holds: the import graph of ``sae_fvu_plugin`` has no circles and every
import points down the layers CONTRIBUTING.md names; experiment specs and method plug-ins
stay small and apart from the runner. Read from the source (nothing is imported)."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "sae_fvu_plugin"

# Lowest first; a module may import its own layer or lower ones (longest prefix wins).
LAYERS = [
    ["validate", "definitions", "stats", "hooks", "kmeans_options", "_compat"],
    ["bootstrap", "functional", "accumulator_state", "accumulator", "provenance", "data"],
    ["_integration", "saebench", "saelens", "sae_io", "clustering", "held_out"],
    ["experiments"],
    ["cli", "__main__", "demo"],
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PKG.rglob("*.py")}
    out: dict[str, set[str]] = {}
    for me, path in files.items():
        pkg = me if path.name == "__init__.py" else me.rpartition(".")[0]
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = pkg.split(".")[: len(pkg.split(".")) - (node.level - 1)]
                    base = ".".join(up + ([base] if base else []))
                names = [base] + [f"{base}.{a.name}" for a in node.names]
            for n in names:
                while n and n not in files:
                    n = n.rpartition(".")[0]
                if n and n != me and not me.startswith(n + "."):  # parents are faces
                    deps.add(n)
        out[me] = deps
    return out


def layer_of(module: str) -> int | None:
    rel = module.split(".", 1)[1] if "." in module else ""
    best: tuple[int, int] | None = None
    for i, names in enumerate(LAYERS):
        for name in names:
            if rel == name or rel.startswith(name + "."):
                if best is None or len(name) > best[1]:
                    best = (i, len(name))
    return None if best is None else best[0]


def test_every_module_has_a_layer_and_imports_only_downwards():
    g = graph()
    upward = []
    for me, deps in g.items():
        if me == "sae_fvu_plugin":  # the package face re-exports lazily
            continue
        mine = layer_of(me)
        assert mine is not None, f"{me} is in no layer: add it to LAYERS and CONTRIBUTING.md"
        upward += [(me, d) for d in deps if d != "sae_fvu_plugin" and (layer_of(d) or 0) > mine]
    assert not upward, upward


def test_no_import_circles():
    g = graph()
    seen: dict[str, int] = {}  # 1: on the stack, 2: done

    def visit(v: str, stack: list[str]) -> None:
        seen[v] = 1
        for w in g[v]:
            if seen.get(w) == 1:
                raise AssertionError(" -> ".join([*stack[stack.index(w) :], v, w]))
            if w not in seen:
                visit(w, [*stack, v])
        seen[v] = 2

    for v in sorted(g):
        if v not in seen:
            visit(v, [])


def test_specs_are_small_and_plugins_do_not_import_the_runner():
    g = graph()
    for spec in ("sweep", "frontier"):
        lines = (PKG / "experiments" / f"{spec}.py").read_text().count("\n")
        assert lines < 200, (spec, lines)
    for plugin in ("clustering", "saes"):
        deps = g[f"sae_fvu_plugin.experiments.methods.{plugin}"]
        assert not deps & {
            "sae_fvu_plugin.experiments.runner",
            "sae_fvu_plugin.experiments.fitting",
            "sae_fvu_plugin.experiments.evaluation",
        }, deps


def test_the_check_can_fail():
    """The layer rule flags an upward import (a module of layer 0 importing the CLI)."""
    assert layer_of("sae_fvu_plugin.validate") == 0
    assert layer_of("sae_fvu_plugin.cli.fit") == 4
    assert layer_of("sae_fvu_plugin.experiments.methods.saes") == 3
    assert layer_of("sae_fvu_plugin.nonexistent") is None
