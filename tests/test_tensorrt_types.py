"""Every TensorRT call of the project type-checked with mypy, since TensorRT cannot run here.

The TensorRT 10.13 API comes from the `tensorrt-stubs` wheel (pure .pyi) and `tensorrt.plugin` from its own
Python sources in the `tensorrt-cu12-bindings` wheel (which cannot import without TensorRT's libraries).
Neither is installed (an installed stub folder named `tensorrt` would import as an empty namespace package
and fool every `import tensorrt` check): .ci/run downloads both wheels into TRT_TYPES_DIR, and the test
unpacks what mypy needs into its tmp folder. A planted wrong method name must fail the check.
"""
import ast
import os
import re
import shutil
import warnings
import zipfile
from pathlib import Path

import pytest

from helpers import report

ROOT = Path(__file__).resolve().parent.parent
WHEELS = Path(os.environ.get("TRT_TYPES_DIR", Path.home() / ".cache" / "av-streamer" / "trt-types"))
STRICT = ["export/tensorrt_build.py", "kernels/tensorrt_plugin.py"]  # whole files: every error counts
SCOPED = ["runtime/device/engines.py"]  # errors count inside the top-level classes / functions using TensorRT
CONFIG = """[mypy]
python_version = 3.11
mypy_path = {types}
check_untyped_defs = True
ignore_missing_imports = True
follow_imports = skip
cache_dir = {cache}

[mypy-tensorrt,tensorrt.*,tensorrt_bindings,tensorrt_bindings.*]
follow_imports = normal
ignore_errors = True

[mypy-runtime.device.engines]
# TrtDeviceEngine._bound starts as None and later holds a binding's key (an object): typing, not a call
disable_error_code = assignment
"""


# `public_api` returns the object it decorates unchanged; untyped, it would turn every decorated function
# (register, aot_impl, from_shape_expr...) into Any and hide their signatures from the check.
EXPORT_STUB = """from types import ModuleType
from typing import Callable, TypeVar
_T = TypeVar("_T")
def public_api(module: ModuleType | None = None, symbol: str | None = None) -> Callable[[_T], _T]: ...
IS_AOT_ENABLED: bool
"""


def _wheel(prefix: str) -> Path:
    found = sorted(WHEELS.glob(f"{prefix}-*.whl"))
    if not found:
        pytest.skip(f"no {prefix} wheel in {WHEELS} (TRT_TYPES_DIR): .ci/run downloads it with "
                    f"`pip download --no-deps`; without it the TensorRT calls cannot be type-checked")
    return found[-1]


def _public_names(source: str) -> list[str]:
    """The names a tensorrt.plugin module exports with its `@public_api()` decorator (set on the package
    at import time, which mypy cannot follow) or `public_api(symbol=...)(obj)` calls."""
    names = []
    with warnings.catch_warnings():  # their docstrings hold invalid escapes
        warnings.simplefilter("ignore", SyntaxWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        tree = ast.parse(source)
    for node in ast.walk(tree):
        decorators = getattr(node, "decorator_list", [])
        for d in decorators:
            if isinstance(d, ast.Call) and getattr(d.func, "id", None) == "public_api":
                symbol = next((k.value.value for k in d.keywords if k.arg == "symbol"), None)
                names.append(symbol or node.name)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Call) \
                and getattr(node.func.func, "id", None) == "public_api":
            names.extend(k.value.value for k in node.func.keywords if k.arg == "symbol")
    return names


def repair_stub(text: str) -> tuple[str, int]:
    """The stubs are generated (pybind11-stubgen) and a few signatures are not Python: a parameter named
    `in`, a parameter without default after defaulted ones. Those lines fixed; returns (text, lines fixed)."""
    lines, fixed = text.split("\n"), 0
    for i, line in enumerate(lines):
        stripped = line.strip()
        if not stripped.startswith("def "):
            continue
        try:
            ast.parse(stripped + " ...")
            continue
        except SyntaxError:
            pass
        line = re.sub(r"([(,]\s*)in:", r"\1in_:", line)
        head, sep, tail = line.partition("(")
        params, seen_default = [], False
        for param in _split_params(tail[:tail.rindex(")")]):
            if "=" in param:
                seen_default = True
            elif seen_default and ":" in param and not param.strip().startswith("*"):
                param += " = ..."
            params.append(param)
        line = head + sep + ",".join(params) + tail[tail.rindex(")"):]
        ast.parse(line.strip() + " ...")  # raises if still broken: a new kind of stub error to handle
        lines[i], fixed = line, fixed + 1
    return "\n".join(lines), fixed


def _split_params(text: str) -> list[str]:
    """Split a parameter list on its top-level commas (not those inside brackets)."""
    out, depth, start = [], 0, 0
    for i, c in enumerate(text):
        depth += c in "[(" and 1 or (c in "])" and -1 or 0)
        if c == "," and depth == 0:
            out.append(text[start:i])
            start = i + 1
    return out + [text[start:]]


def unpack_types(dest: Path) -> tuple[Path, int]:
    """The stubs' tensorrt / tensorrt_bindings .pyi (repaired), plus tensorrt/plugin/: the bindings wheel's
    plugin sources (their `Tuple[Union[X, int]]` annotations, which say one element, read as any number, as
    the code takes) and an __init__.pyi re-exporting their public names. Returns (the folder for MYPYPATH,
    lines repaired)."""
    repaired = 0
    with zipfile.ZipFile(_wheel("tensorrt_stubs")) as z:
        for name in z.namelist():
            if name.endswith(".pyi") and name.split("/")[0] in ("tensorrt", "tensorrt_bindings"):
                text, fixed = repair_stub(z.read(name).decode())
                (dest / name).parent.mkdir(parents=True, exist_ok=True)
                (dest / name).write_text(text)
                repaired += fixed
    plugin = dest / "tensorrt" / "plugin"
    plugin.mkdir(parents=True)
    exports = []
    with zipfile.ZipFile(_wheel("tensorrt_cu12_bindings")) as z:
        for name in z.namelist():
            if name.startswith("tensorrt_bindings/plugin/_") and name.endswith(".py"):
                source, fixed = re.subn(r"Tuple\[Union\[(\w+), int\]\]", r"Tuple[Union[\1, int], ...]",
                                        z.read(name).decode())  # a 1-tuple as written; any length meant
                repaired += fixed
                module = Path(name).stem
                (plugin / f"{module}.py").write_text(source)
                exports += [f"from .{module} import {n} as {n}" for n in _public_names(source)]
    (plugin / "__init__.pyi").write_text("\n".join(exports) + "\n")
    (plugin / "_export.pyi").write_text(EXPORT_STUB)  # mypy reads it instead of _export.py
    return dest, repaired


def _mypy(files: list[Path], types: Path, tmp: Path) -> tuple[int, str]:
    api = pytest.importorskip("mypy.api", reason="mypy is not installed (pip install -e \".[dev]\" installs it)")
    config = tmp / "mypy.ini"
    config.write_text(CONFIG.format(types=types, cache=tmp / "mypy_cache"))
    stdout, stderr, status = api.run(["--config-file", str(config), "--no-error-summary", *map(str, files)])
    return status, stdout + stderr


def tensorrt_scopes(path: Path) -> list[range]:
    """Line ranges of the top-level classes and functions of `path` that import tensorrt."""
    scopes = []
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef)) and any(
                isinstance(n, ast.Import) and any(a.name.split(".")[0] == "tensorrt" for a in n.names)
                for n in ast.walk(node)):
            scopes.append(range(node.lineno, node.end_lineno + 1))
    return scopes


def counted_errors(out: str) -> list[str]:
    """mypy's error lines that count: all in STRICT files, those inside TensorRT scopes in SCOPED ones."""
    scopes = {f: tensorrt_scopes(ROOT / f) for f in SCOPED}
    errors = []
    for line in out.splitlines():
        m = re.match(r"(.+?):(\d+): error:", line)
        if not m:
            continue
        f = Path(m.group(1)).resolve().relative_to(ROOT).as_posix() if Path(m.group(1)).is_absolute() else m.group(1)
        if f in SCOPED and not any(int(m.group(2)) in r for r in scopes[f]):
            continue
        errors.append(line)
    return errors


def test_tensorrt_calls_type_check_and_a_wrong_name_fails(tmp_path):
    types, repaired = unpack_types(tmp_path / "types")
    assert repaired <= 16, f"{repaired} stub lines repaired: the stubs changed a lot; look at them"
    exports = (types / "tensorrt" / "plugin" / "__init__.pyi").read_text()
    for name in ("register", "aot_impl", "impl", "TensorDesc", "Tensor", "KernelLaunchParams", "SymInt32",
                 "SymIntExprs", "from_shape_expr"):
        assert f"import {name} as {name}" in exports, f"tensorrt.plugin has no {name} in this wheel"
    assert tensorrt_scopes(ROOT / "runtime/device/engines.py"), "TrtDeviceEngine no longer imports tensorrt?"
    status, out = _mypy([ROOT / f for f in STRICT + SCOPED], types, tmp_path)
    errors = counted_errors(out)
    report(f"mypy over {', '.join(STRICT + SCOPED)} against tensorrt-stubs ({repaired} generated "
           f"signatures and annotations repaired) and tensorrt.plugin: status {status}, "
           f"{len(errors)} errors in TensorRT code")
    assert status in (0, 1) and not errors, out

    planted = tmp_path / "planted"
    planted.mkdir()
    build = (ROOT / "export/tensorrt_build.py").read_text()
    plugin = (ROOT / "kernels/tensorrt_plugin.py").read_text()
    assert "builder.create_builder_config()" in build and "@trtp.aot_impl(" in plugin
    (planted / "build_mutant.py").write_text(build.replace("builder.create_builder_config()",
                                                           "builder.create_builder_confg()"))
    (planted / "plugin_mutant.py").write_text(plugin.replace("dtype=trt.float32)", "dtyp=trt.float32)", 1)
                                              .replace("@trtp.aot_impl(", "@trtp.aot_implementation(", 1))
    status, out = _mypy(sorted(planted.iterdir()), types, tmp_path)
    assert status == 1, out
    assert '"Builder" has no attribute "create_builder_confg"' in out, out
    assert 'Module has no attribute "aot_implementation"' in out, out
    assert 'Unexpected keyword argument "dtyp" for "from_shape_expr"' in out, out
    shutil.rmtree(tmp_path / "mypy_cache", ignore_errors=True)
