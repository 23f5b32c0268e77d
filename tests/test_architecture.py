"""The package's shape: no import cycle, every package import at module top, one home for the
image placeholder, files a reader can hold in their head."""

from __future__ import annotations

import ast

from conftest import ROOT

PACKAGE = ROOT / "minigpt4"
MAX_LINES = 360  # "no package file over ~350 lines"


def _module_name(path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(tree: ast.Module, module: str, is_package: bool, top_level_only: bool) -> set[str]:
    """The minigpt4 modules that ``module`` imports (relative imports resolved)."""
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] == "minigpt4"}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".") if is_package else module.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            if base.split(".")[0] == "minigpt4":
                found.add(base)
                found |= {f"{base}.{alias.name}" for alias in node.names}
    return found


def _graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        targets = _imports(tree, name, path.name == "__init__.py", top_level_only=True)
        graph[name] = {t for t in targets if t in files and t != name}
    return graph


def test_no_import_cycle_in_the_package():
    graph = _graph()
    assert len(graph) > 40  # the walk found the package
    state, stack, cycles = {}, [], []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            # importing a package runs its __init__, which is an edge of its own
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    # a package __init__ that imports its own submodules is not a cycle of modules
    real = [c for c in cycles if not all(a.startswith(b + ".") or b.startswith(a + ".") for a, b in zip(c, c[1:]))]
    assert not real, "import cycles: " + "; ".join(" -> ".join(c) for c in real)


def test_package_imports_are_at_module_top():
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for func in ast.walk(tree):
            if isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for node in ast.walk(func):
                    if isinstance(node, (ast.Import, ast.ImportFrom)) and _imports(
                            ast.Module(body=[node], type_ignores=[]), _module_name(path), path.name == "__init__.py", True):
                        offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not offenders, f"function-level minigpt4 imports: {offenders}"


def test_image_placeholder_has_one_home():
    sources = list(PACKAGE.rglob("*.py")) + list(ROOT.glob("*.py"))
    hits = [f"{p.relative_to(ROOT)}" for p in sources
            if "<ImageHere>" in p.read_text(encoding="utf-8") and p.name != "constants.py"]
    assert not hits, hits


def test_package_files_stay_readable():
    long = {str(p.relative_to(ROOT)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, long
