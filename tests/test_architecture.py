"""The layers' import rules, read from the source with `ast` (imports inside functions count),
from one declaration (`LAYERS`) that also writes the README's architecture table: each module
imports only its own layer and those below it, samplers and networks never each other, the
library never the application, and no module imports itself back through others (no cycles)."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "sde_diffusion"
README = PACKAGE.parent / "README.md"

# Bottom up: (layer, its modules and packages under sde_diffusion, what it holds). A layer may
# import the layers listed before it; samplers and networks are siblings that never meet.
LAYERS = [
    ("processes", ("utils", "processes"), "tensor helpers, the processes, the denoiser D(x, t) and its score, exact mixtures"),
    ("files", ("files",), "atomic outputs, image arrays in and out, checkpoints, pictures"),
    ("samplers", ("sampling",), "the registry, `SamplerSpec`, `sample`, step hooks, every sampler, inpainting"),
    ("networks", ("models",), "the registry, the networks, EDM's, the preconditioning table"),
    ("data", ("data",), "the data set registry, toy sets, published file formats, image folders and their cache"),
    ("published networks", ("published",), "score_sde checkpoints and EDM pickles onto our networks"),
    ("training", ("training",), "losses, the training step, EMA, guidance, speed options, torchrun"),
    ("evaluation", ("evaluation",), "likelihood, sample-quality metrics, FID statistics, judges, studies"),
    ("application", ("app",), "main.py's modes, config checks, the trainer, plug-ins"),
]
SIBLINGS = {("samplers", "networks"), ("networks", "samplers")}


def layer_of(module: str):
    name = module[len("sde_diffusion."):]
    for layer, members, _ in LAYERS:
        if any(name == member or name.startswith(member + ".") for member in members):
            return layer
    return None


def allowed(layer: str) -> list:
    names = [name for name, _, _ in LAYERS]
    return [below for below in names[:names.index(layer)] if (layer, below) not in SIBLINGS]


def layer_table() -> str:
    lines = ["| layer | modules | what | may import |", "|---|---|---|---|"]
    for layer, members, what in LAYERS:
        modules = ", ".join(f"`{m}/`" if (PACKAGE / m).is_dir() else f"`{m}`" for m in members)
        below = allowed(layer)
        lines.append(f"| {layer} | {modules} | {what} | {', '.join(below) if below else 'torch only'} |")
    return "\n".join(lines)


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


def test_every_module_has_a_layer_and_imports_only_below_it():
    graph = imports()
    unlayered = sorted(module for module in graph if module != "sde_diffusion" and layer_of(module) is None)
    assert not unlayered, f"modules in no layer of LAYERS: {unlayered}"
    breaches = [f"{module} ({layer_of(module)}) imports {target} ({layer_of(target)})"
                for module, targets in sorted(graph.items()) if module != "sde_diffusion"
                for target in sorted(targets) if target != "sde_diffusion"
                and layer_of(target) != layer_of(module) and layer_of(target) not in allowed(layer_of(module))]
    assert not breaches, "\n".join(breaches)


def test_the_readme_table_is_the_declaration():
    assert layer_table() in README.read_text(), "README's architecture table differs from LAYERS:\n" + layer_table()


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
    assert "sde_diffusion.app.plan" in graph["sde_diffusion.app.modes"]
    assert "sde_diffusion.sampling.spec" in graph["sde_diffusion.sampling.controllable"]
    assert "sde_diffusion.processes.sdes" in graph["sde_diffusion.sampling.spec"]
