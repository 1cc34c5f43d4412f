"""The package layout: imports only go downward, no module imports itself through a circle, and the
host path never imports torch.

Read from the source (every `import` / `from ... import`, lazy ones inside functions included), so a
new upward import fails here before it fails on someone's machine. A floor is a package or a part of
one (runtime is four floors: its shared core, its host and device paths above that, and the door that
picks a path above both); a module may import its own floor and the floors named for it.
"""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUNTIME = {"runtime", "runtime.host", "runtime.device", "runtime.open_session", "runtime.bench"}
# floor -> the project floors it may import (everything else of the project is above it)
ALLOWED = {
    "unitio": set(),
    "kernels": {"unitio"},
    "model_src": {"unitio", "kernels"},
    # runtime: the engine-directory contract and what both paths share (manifest, spec, engine, worker,
    # order, ...); the host path (numpy) and the device path (torch) each on it, never on each other
    "runtime": {"unitio"},
    "runtime.host": {"unitio", "runtime"},
    "runtime.device": {"unitio", "kernels", "runtime"},  # kernels: the TensorRT plugin, where a trt engine loads
    "runtime.open_session": {"unitio", "runtime", "runtime.host", "runtime.device"},  # the door: either path
    "runtime.bench": {"unitio", "runtime", "runtime.open_session"},
    # calibration records and quantizes the stage wrappers (model_src.stages);
    # export's build and verify use calibration's quantized modules and metrics
    "calibration": {"unitio", "kernels", "model_src", *RUNTIME},
    "export": {"unitio", "kernels", "model_src", *RUNTIME, "calibration"},
    # training: the conversation and its metrics are numpy only; the trainer uses model_src
    "training": {"unitio", "kernels", "model_src", *RUNTIME, "export", "calibration"},
    # serve: the protocol, the replica and the Ray Serve app run on the runtime, never model_src
    "serve": {"unitio", *RUNTIME},
    "streamer": {"unitio", "kernels", "model_src", *RUNTIME, "export", "calibration", "planning", "training",
                 "serve"},
}
PACKAGES = sorted({f.split(".")[0] for f in ALLOWED})
PROJECT = set(PACKAGES) | {"planning"}


def _all_imports(path: Path, package: str) -> set[str]:
    """Fully qualified modules imported by the module at `path` (relative imports resolved)."""
    tree = ast.parse(path.read_text(), str(path))
    here = [package] + list(path.relative_to(ROOT / package).with_suffix("").parts)
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                mod = ".".join(here[:-node.level] + ([node.module] if node.module else []))
                found.add(mod)
                if not node.module:  # `from . import x`
                    found.update(f"{mod}.{a.name}" for a in node.names)
            else:
                found.add(node.module)
    return found


def _imports(path: Path, package: str) -> set[str]:
    """The project modules among `_all_imports`."""
    return {m for m in _all_imports(path, package) if m.split(".")[0] in PROJECT}


def floor(module: str) -> str:
    """The floor a module stands on: the longest ALLOWED key it is, or is inside (else its package)."""
    keys = [k for k in ALLOWED if module == k or module.startswith(k + ".")]
    return max(keys, key=len) if keys else module.split(".")[0]


def _name(path: Path, package: str) -> str:
    return ".".join([package] + list(path.relative_to(ROOT / package).with_suffix("").parts)).removesuffix(".__init__")


def _modules():
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            yield package, path


def upward(path: Path, package: str) -> list[str]:
    """The imports of the module at `path` that leave its floor for one it may not import."""
    own = floor(_name(path, package))
    return [f"{path.relative_to(ROOT)} imports {mod}" for mod in sorted(_imports(path, package))
            if floor(mod) != own and floor(mod) not in ALLOWED[own]]


def torch_imports(path: Path, package: str) -> list[str]:
    return [f"{path.relative_to(ROOT)} imports {m}" for m in sorted(_all_imports(path, package))
            if m.split(".")[0] == "torch"]


def test_imports_only_go_downward():
    bad = [line for package, path in _modules() for line in upward(path, package)]
    assert not bad, "upward imports:\n" + "\n".join(bad)


def test_the_host_path_never_imports_torch():
    """runtime/host/ holds no `import torch` anywhere, lazy ones included (its AOTInductor engine lives in
    runtime/aoti.py, loaded only for such a directory)."""
    files = sorted((ROOT / "runtime" / "host").rglob("*.py"))
    assert len(files) >= 7
    bad = [line for path in files for line in torch_imports(path, "runtime")]
    assert not bad, "torch on the host path:\n" + "\n".join(bad)


def test_the_rules_catch_a_planted_import(tmp_path, monkeypatch):
    """The checks themselves: a host module that imports the device path, and one with a lazy torch import,
    are both refused (planted in a copy of the layout under tmp_path)."""
    import sys

    module, real = sys.modules[__name__], ROOT
    host = tmp_path / "runtime" / "host"
    host.mkdir(parents=True)
    planted = host / "planted.py"
    planted.write_text("from ..device.state import DeviceKVCache\n\n\ndef f():\n    import torch.cuda\n")
    monkeypatch.setattr(module, "ROOT", tmp_path)
    assert upward(planted, "runtime") == ["runtime/host/planted.py imports runtime.device.state"]
    assert torch_imports(planted, "runtime") == ["runtime/host/planted.py imports torch.cuda"]
    monkeypatch.setattr(module, "ROOT", real)
    assert not upward(real / "runtime" / "host" / "session.py", "runtime")


def test_no_import_cycle_between_modules():
    graph: dict[str, set[str]] = {}
    for package, path in _modules():
        graph[_name(path, package)] = _imports(path, package)
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
