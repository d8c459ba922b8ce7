"""The layers' import rules, read from the source with `ast` (imports inside functions count):
the library never imports the application (`sde_diffusion.app`), samplers never import
networks, and no module imports itself back through others (no cycles)."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "sde_diffusion"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports() -> dict:
    """module -> the sde_diffusion modules it imports (a `from package import name` that names a
    submodule counts as that submodule)."""
    modules = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names if alias.name.startswith("sde_diffusion"))
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[:len(base) - (node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                if not target.startswith("sde_diffusion"):
                    continue
                submodules = [f"{target}.{alias.name}" for alias in node.names if f"{target}.{alias.name}" in modules]
                found.update(submodules or [target])
        graph[name] = found - {name}
    return graph


def test_the_library_never_imports_the_application():
    offenders = {module: sorted(target for target in targets if target.startswith("sde_diffusion.app"))
                 for module, targets in imports().items() if not module.startswith("sde_diffusion.app")}
    assert not {module: targets for module, targets in offenders.items() if targets}


def test_samplers_never_import_networks():
    offenders = {module: sorted(target for target in targets if target.startswith("sde_diffusion.models"))
                 for module, targets in imports().items() if module.startswith("sde_diffusion.sampling")}
    assert not {module: targets for module, targets in offenders.items() if targets}


def test_no_import_cycles():
    graph = imports()
    # A package's __init__ re-exports its submodules; a submodule importing a sibling through the
    # package is an edge to the sibling, so package -> submodule edges are left out here.
    graph = {module: {t for t in targets if not t.startswith(module + ".")} for module, targets in graph.items()}
    state, path = {}, []

    def visit(module):
        state[module] = "open"
        path.append(module)
        for target in sorted(graph.get(module, ())):
            if state.get(target) == "open":
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(target):] + [target]))
            if target not in state:
                visit(target)
        path.pop()
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module)


def test_the_rules_see_real_imports():
    """The walk finds what is there: the app imports the library, the library its parts."""
    graph = imports()
    assert "sde_diffusion.app.config" in graph["sde_diffusion.app.modes"]
    assert "sde_diffusion.sampling.call" in graph["sde_diffusion.sampling.controllable"]
    assert "sde_diffusion.sdes" in graph["sde_diffusion.sampling.call"]
