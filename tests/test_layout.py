"""The package layout: imports only go downward, and no module imports itself through a circle.

Read from the source (every `import` / `from ... import`, lazy ones inside functions included), so a
new upward import fails here before it fails on someone's machine.
"""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# package -> the project packages it may import (everything else of the project is above it)
ALLOWED = {
    "unitio": set(),
    "kernels": {"unitio"},
    "model_src": {"unitio", "kernels"},
    "runtime": {"unitio", "kernels"},  # kernels: the TensorRT plugin, where a trt engine is loaded
    # calibration records and quantizes the stage wrappers (model_src.stages); export's build and verify
    # use calibration's quantized modules and metrics
    "calibration": {"unitio", "kernels", "model_src", "runtime"},
    "export": {"unitio", "kernels", "model_src", "runtime", "calibration"},
    # training: the conversation and its metrics are numpy only; the trainer uses model_src
    "training": {"unitio", "kernels", "model_src", "runtime", "export", "calibration"},
    # serve: the protocol, the replica and the Ray Serve app run on the runtime, never model_src
    "serve": {"unitio", "runtime"},
    "streamer": {"unitio", "kernels", "model_src", "runtime", "export", "calibration", "planning", "training", "serve"},
}


def _imports(path: Path, package: str) -> set[str]:
    """Fully qualified project modules imported by the module at `path` (relative imports resolved)."""
    tree = ast.parse(path.read_text(), str(path))
    here = [package] + list(path.relative_to(ROOT / package).with_suffix("").parts)
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[:-node.level] if here[-1] != "__init__" else here[:-node.level]
                mod = ".".join(base + ([node.module] if node.module else []))
                found.add(mod)
                if not node.module:  # `from . import x`
                    found.update(f"{mod}.{a.name}" for a in node.names)
            else:
                found.add(node.module)
    return {m for m in found if m.split(".")[0] in ALLOWED or m.split(".")[0] in ("planning", "training")}


def _modules():
    for package in ALLOWED:
        for path in sorted((ROOT / package).rglob("*.py")):
            yield package, path


def test_imports_only_go_downward():
    bad = []
    for package, path in _modules():
        for mod in _imports(path, package):
            top = mod.split(".")[0]
            if top != package and not any(mod == a or mod.startswith(a + ".") for a in ALLOWED[package]):
                bad.append(f"{path.relative_to(ROOT)} imports {mod}")
    assert not bad, "upward imports:\n" + "\n".join(bad)


def test_no_import_cycle_between_modules():
    graph: dict[str, set[str]] = {}
    for package, path in _modules():
        name = ".".join([package] + list(path.relative_to(ROOT / package).with_suffix("").parts))
        name = name.removesuffix(".__init__")
        graph[name] = _imports(path, package)
    # keep only edges to modules (a `from pkg.mod import name` names the module)
    graph = {m: {d for d in deps if d in graph} for m, deps in graph.items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for d in graph[m]:
            if state.get(d) == 1:
                cycles.append(" -> ".join(stack[stack.index(d):] + [d]))
            elif d not in state:
                visit(d, stack + [d])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [m])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)
