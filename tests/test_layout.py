"""The house's rules (ARCHITECTURE.md), checked on an import graph built by parsing every
gptcli module with `ast`: imports inside functions and under TYPE_CHECKING count too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "gptcli"

# Lowest first; a module may import its own floor and those below, never above.
LAYERS: list[tuple[str, set[str]]] = [
    ("ground", {"gptcli", "errors", "terminal", "paths", "console", "limits", "untrusted"}),
    ("model and sampling", {"model", "sampling"}),
    ("llama", {"llama"}),
    ("inside", {"inside"}),
    ("backends", {"backends"}),
    ("render", {"render"}),
    ("chat and explorer", {"chat", "explorer"}),
    ("commands", {"commands", "cli", "entry", "__main__"}),
]
TOP_LEVEL = {"__init__", "__main__", "cli", "entry", "errors", "terminal", "paths", "console",
             "limits", "untrusted"}  # fmt: skip


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def typing_only(tree: ast.Module) -> set[ast.AST]:
    """The imports under `if TYPE_CHECKING:`: they name types and never run."""
    return {
        sub
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for stmt in node.body
        for sub in ast.walk(stmt)
    }


def imports(name: str, path: Path, runtime: bool = False) -> list[tuple[str, int]]:
    """(imported module, line) for every import in the file, resolved to a module;
    `runtime`: only the imports that run (not those under TYPE_CHECKING)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    tree = ast.parse(path.read_text(), str(path))
    skip = typing_only(tree) if runtime else set()
    for node in ast.walk(tree):
        if node in skip:
            continue
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            for a in node.names:
                full = f"{mod}.{a.name}"
                out.append((full if full in MODULES else mod, node.lineno))
    return out


def gptcli_edges(runtime: bool = False) -> dict[str, set[tuple[str, int]]]:
    edges: dict[str, set[tuple[str, int]]] = {}
    for name, path in MODULES.items():
        targets = set()
        for mod, line in imports(name, path, runtime):
            while mod not in MODULES and "." in mod:
                mod = mod.rpartition(".")[0]
            if mod in MODULES and mod != name and mod != "gptcli":
                targets.add((mod, line))
        edges[name] = targets
    return edges


def layer(name: str) -> int:
    parts = name.split(".")
    key = parts[1] if len(parts) > 1 else parts[0]
    for i, (_, names) in enumerate(LAYERS):
        if key in names:
            return i
    raise AssertionError(f"{name} is in no layer of the table")


def test_every_module_has_a_layer():
    for name in MODULES:
        layer(name)


def test_no_import_cycle():
    """Imports that run, in functions too; a TYPE_CHECKING import names a type only."""
    graph = {m: {t for t, _ in ts} for m, ts in gptcli_edges(runtime=True).items()}
    # A package's __init__ is imported with any of its modules: that is not a circle.
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_no_module_imports_from_a_higher_layer():
    upward = [
        f"{m} (line {line}) imports {t}: {LAYERS[layer(m)][0]} < {LAYERS[layer(t)][0]}"
        for m, targets in gptcli_edges().items()
        for t, line in sorted(targets)
        if layer(t) > layer(m)
    ]
    assert not upward, "\n".join(upward)


def test_only_the_named_modules_sit_at_the_top():
    top = {p.stem for p in PACKAGE.glob("*.py")}
    assert top <= TOP_LEVEL, f"modules at the top of gptcli/: {sorted(top - TOP_LEVEL)}"
    assert not (PACKAGE / "chat" / "remote_repl.py").exists()
    assert not list(PACKAGE.rglob("remote_repl.py"))


@pytest.mark.parametrize("library", ["llama_cpp"])
def test_llama_cpp_is_imported_only_under_llama(library):
    outside = [
        f"{name} (line {line})"
        for name, path in MODULES.items()
        for mod, line in imports(name, path)
        if mod.split(".")[0] == library and not name.startswith("gptcli.llama.")
    ]
    assert not outside, f"{library} imported outside gptcli/llama/: {outside}"


def test_the_graph_sees_imports_inside_functions():
    """A circle hidden in a function-level import counts: the graph must see those."""
    # open_backend imports llama/load.py inside the function, so --help stays light.
    assert any(t == "gptcli.llama.load" for t, _ in gptcli_edges()["gptcli.backends"])


def test_capture_point_names_are_written_once():
    """llama.cpp's tensor names (l_out-N, ffn_inp-N, kq_soft_max-N) are matched through
    llama/capture.py's table, never by a regex of their own elsewhere."""
    from gptcli.llama.capture import POINTS

    matchers = []
    for name, path in MODULES.items():
        if name == "gptcli.llama.capture":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and getattr(node.func, "attr", "") in {"compile", "match", "search", "fullmatch"}
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
                and any(kind in node.args[0].value for kind in POINTS)
            ):
                matchers.append(f"{name} (line {node.lineno})")
    assert not matchers, f"capture-point names matched outside llama/capture.py: {matchers}"


def test_the_backend_interface_is_typed():
    """Request and NextStep name their types; no field is a bare `object`."""
    import dataclasses

    from gptcli.backends.base import NextStep, Request
    from gptcli.backends.generation import Generation

    for cls in (Request, NextStep, Generation):
        loose = [f.name for f in dataclasses.fields(cls) if "object" in str(f.type)]
        assert not loose, f"{cls.__name__} fields typed object: {loose}"


def test_backends_print_nothing():
    """Backends yield events and return data: no console, no rich, no print, no stdout."""
    printing = []
    for name, path in MODULES.items():
        if not name.startswith("gptcli.backends"):
            continue
        for mod, line in imports(name, path):
            if mod.split(".")[0] == "rich" or mod.startswith(("gptcli.console", "gptcli.render")):
                printing.append(f"{name} (line {line}) imports {mod}")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "print":
                printing.append(f"{name} (line {node.lineno}) calls print")
            if isinstance(node, ast.Attribute) and node.attr == "stdout":
                printing.append(f"{name} (line {node.lineno}) uses stdout")
    assert not printing, "\n".join(printing)
