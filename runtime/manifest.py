"""The engine directory's manifest: what was built, from what, with what, and the SHA-256 of every file.

Reading it checks everything it can before anything runs, and refuses a mismatch with a message that
says what differs: another format or preset, a missing or edited file, another backend version.
numpy-free, torch-free: the runtime loads engines with this alone.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

FORMAT = "av-streamer-engines/1"
MANIFEST = "manifest.json"


class ManifestError(ValueError):
    """An engine directory that does not match its manifest, or not what the caller expects."""


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str  # numpy dtype name

    def to_json(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_json(cls, d: dict) -> TensorSpec:
        return cls(d["name"], tuple(d["shape"]), d["dtype"])


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_manifest(directory: Path, manifest: dict) -> None:
    """Add the SHA-256 of every file in `directory` (but the manifest) and write manifest.json."""
    files = sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST)
    manifest = {"format": FORMAT, **manifest,
                "files": {str(p.relative_to(directory)): sha256(p) for p in files}}
    manifest["checksum"] = _checksum(manifest)
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))


def _checksum(manifest: dict) -> str:
    """SHA-256 of the manifest's own content (without this field): an edit of manifest.json shows."""
    body = {k: v for k, v in manifest.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def read_manifest(directory: str | Path, expect_preset: str | None = None,
                  installed_versions: dict[str, str | None] | None = None) -> dict:
    """Read and check `directory`/manifest.json. Raises ManifestError naming what differs.

    `installed_versions` maps a library (e.g. "onnxruntime") to the version installed here; the
    manifest's backend library must match it in major.minor.
    """
    directory = Path(directory)
    path = directory / MANIFEST
    if not path.is_file():
        raise ManifestError(f"{directory} is not an engine directory: no {MANIFEST} (build one with `streamer build`)")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ManifestError(f"{path} is not valid JSON: {e}") from None
    if manifest.get("format") != FORMAT:
        raise ManifestError(f"{path}: expected format {FORMAT!r}, found {manifest.get('format')!r}")
    if manifest.get("checksum") != _checksum(manifest):
        raise ManifestError(f"{path} was edited after the build (its checksum does not match its content)")
    preset = manifest["preset"]["name"]
    if expect_preset is not None and preset != expect_preset:
        raise ManifestError(f"{directory} holds engines of preset {preset!r}, expected {expect_preset!r}")
    for rel, digest in manifest["files"].items():
        f = directory / rel
        if not f.is_file():
            raise ManifestError(f"{directory}: {rel} is listed in the manifest but missing")
        if sha256(f) != digest:
            raise ManifestError(f"{directory}: {rel} was changed after the build (SHA-256 differs from the manifest)")
    library = manifest["backend_library"]
    built = manifest["versions"].get(library)
    here = (installed_versions or {}).get(library)
    if installed_versions is not None and _major_minor(built) != _major_minor(here):
        raise ManifestError(f"{directory} was built with {library} {built}; this machine has {library} {here}")
    return manifest


def stage_io(manifest: dict, stage: str) -> tuple[list[TensorSpec], list[TensorSpec]]:
    s = manifest["stages"][stage]
    return [TensorSpec.from_json(t) for t in s["inputs"]], [TensorSpec.from_json(t) for t in s["outputs"]]


def _major_minor(version: str | None) -> tuple[str, ...] | None:
    return tuple(version.split(".")[:2]) if version else None
