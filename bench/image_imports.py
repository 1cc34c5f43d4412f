"""Imports limited to what the GPU image has, so a missing wheel shows up on the CPU first.

The GPU machine's image holds Python, torch, triton, numpy, onnx and onnxruntime (with the packages
those require) and no package registry; this repo travels with the working tree. `install()` puts a
guard around each finder on `sys.meta_path` so that every other top-level module (rich, safetensors,
tqdm, modelopt, transformers, diffusers, imageio, matplotlib, ...) is absent, as on the image: its import
raises ModuleNotFoundError and importlib.util.find_spec gives None. bench/gpu_check.py installs it in its section processes for a dry run (`--restrict-imports`).
"""
from __future__ import annotations

import importlib.metadata as metadata
import os
import re
import sys
from importlib.machinery import PathFinder
from pathlib import Path

IMAGE = ("torch", "triton", "numpy", "onnx", "onnxruntime")
ROOT = Path(__file__).resolve().parent.parent


def _requirements(dist: str, seen: set[str]) -> None:
    """`dist` and every distribution it requires (markers with an extra skipped), normalised names."""
    try:
        d = metadata.distribution(dist)
    except metadata.PackageNotFoundError:
        return
    name = re.sub(r"[-_.]+", "-", d.metadata["Name"]).lower()
    if name in seen:
        return
    seen.add(name)
    for req in d.requires or []:
        if "extra ==" in req:
            continue
        _requirements(re.split(r"[ ;<>=!~\[(]", req.strip(), maxsplit=1)[0], seen)


def allowed_modules() -> set[str]:
    """Top-level module names the image has: the standard library, the IMAGE distributions and what they
    require, and this repo's packages."""
    dists: set[str] = set()
    for dist in IMAGE:
        _requirements(dist, dists)
    allowed = set(sys.stdlib_module_names) | set(sys.builtin_module_names) | set(IMAGE)
    for module, owners in metadata.packages_distributions().items():
        if any(re.sub(r"[-_.]+", "-", o).lower() in dists for o in owners):
            allowed.add(module)
    allowed |= {p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file()} | {"bench"}
    return allowed


class ImageFinder:
    """Which modules the image lacks: those outside `allowed`, unless found inside an allowed package's
    folder (setuptools' vendored jaraco, ...). Remembers what it refused."""

    def __init__(self, allowed: set[str]) -> None:
        self.allowed, self.refused = allowed, []
        self.folders = tuple(str(Path(p, m)) + os.sep for p in sys.path if p and Path(p).is_dir()
                             for m in allowed if Path(p, m).is_dir())
        self._seen: dict[str, bool] = {}

    def refuses(self, name: str, path=None) -> bool:
        top = name.partition(".")[0]
        if top in self.allowed or top.startswith("_sysconfigdata"):  # the stdlib's per-platform build vars
            return False
        if top not in self._seen:
            spec = PathFinder.find_spec(top) if top == name else None
            places = [spec.origin or "", *(spec.submodule_search_locations or [])] if spec is not None else []
            vendored = any(str(p).startswith(self.folders) for p in places)  # a namespace package has no origin
            self._seen[top] = not vendored
            if not vendored:
                self.refused.append(top)
        return self._seen[top]


class Guarded:
    """One meta-path finder that finds nothing the image lacks: to the importer (and importlib.util's
    find_spec) such a module is absent, as on the GPU machine ("No module named 'rich'")."""

    def __init__(self, inner, image: ImageFinder) -> None:
        self.inner, self.image = inner, image

    def find_spec(self, name, path=None, target=None):
        if self.image.refuses(name, path):
            return None
        find = getattr(self.inner, "find_spec", None)
        return find(name, path, target) if find is not None else None

    def __getattr__(self, attr):  # find_distributions, invalidate_caches, ...
        return getattr(self.inner, attr)


def install() -> ImageFinder:
    """Guard every finder on sys.meta_path (modules imported before stay); returns what decides, with
    `.refused` the top-level names refused so far."""
    image = ImageFinder(allowed_modules())
    sys.meta_path[:] = [Guarded(f, image) for f in sys.meta_path]
    return image
