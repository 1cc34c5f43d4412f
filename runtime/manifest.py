"""The engine directory's manifest: what was built, from what, with what, and the SHA-256 of every file.

Reading it checks everything it can before anything runs, and refuses a mismatch with a message that
says what differs: another format or preset, a missing or edited file, another backend version, a
manifest of the wrong shape or with numbers out of bounds, a path leaving the directory, and (with a
trust key) a missing or failing signature (runtime/signing.py; threat model in docs/SECURITY.md).
numpy-free, torch-free: the runtime loads engines with this alone.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from unitio.jsonsafe import loads_bounded
from unitio.limits import DTYPES, preset_problem, shape_problem
from unitio.names import STAGES

from .signing import SIGNATURE, sign_manifest, verify_manifest

FORMAT = "av-streamer-engines/1"
MANIFEST = "manifest.json"
MAX_MANIFEST_BYTES = 16 << 20
MAX_MANIFEST_DEPTH = 16  # what `streamer build` writes nests 6 deep


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
    """Add the SHA-256 of every file in `directory` (but the manifest) and write manifest.json. A
    signature of an earlier manifest there is removed (it would not verify: sign again)."""
    (directory / SIGNATURE).unlink(missing_ok=True)
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
                  installed_versions: dict[str, str | None] | None = None, trust: Path | None = None) -> dict:
    """Read and check `directory`/manifest.json. Raises ManifestError (SignatureError) naming what differs.

    `installed_versions` maps a library (e.g. "onnxruntime") to the version installed here; the
    manifest's backend library must match it in major.minor. `trust`: an Ed25519 public key file; the
    directory must then be signed with it (manifest.sig over these very manifest bytes) and hold no
    file the manifest does not list. Every path in the manifest must stay inside the directory.
    """
    directory = Path(directory)
    path = directory / MANIFEST
    if not path.is_file():
        raise ManifestError(f"{directory} is not an engine directory: no {MANIFEST} (build one with `streamer build`)")
    if path.stat().st_size > MAX_MANIFEST_BYTES:
        raise ManifestError(f"{path}: expected a manifest of at most {MAX_MANIFEST_BYTES} bytes, "
                            f"got {path.stat().st_size}")
    raw = path.read_bytes()[:MAX_MANIFEST_BYTES + 1]
    if trust is not None:  # before anything in it is believed: these bytes are the ones parsed below
        verify_manifest(directory, raw, trust)
    try:
        manifest = loads_bounded(raw, MAX_MANIFEST_BYTES, MAX_MANIFEST_DEPTH)
    except ValueError as e:
        raise ManifestError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(manifest, dict):
        raise ManifestError(f"{path}: expected a JSON object, got {type(manifest).__name__}")
    if manifest.get("format") != FORMAT:
        raise ManifestError(f"{path}: expected format {FORMAT!r}, found {str(manifest.get('format'))[:80]!r}")
    if manifest.get("checksum") != _checksum(manifest):
        raise ManifestError(f"{path} was edited after the build (its checksum does not match its content)")
    check_structure(manifest, path)
    preset = manifest["preset"]["name"]
    if expect_preset is not None and preset != expect_preset:
        raise ManifestError(f"{directory} holds engines of preset {preset!r}, expected {expect_preset!r}")
    for rel, digest in manifest["files"].items():
        f = confined(directory, rel, "files entry")
        if not f.is_file():
            raise ManifestError(f"{directory}: {rel} is listed in the manifest but missing")
        if sha256(f) != digest:
            raise ManifestError(f"{directory}: {rel} was changed after the build (SHA-256 differs from the manifest)")
    for what, rel in [("initial_state", manifest["initial_state"])] + [
            (f"stages.{s}.file", info["file"]) for s, info in manifest["stages"].items()]:
        confined(directory, rel, what)
        if rel not in manifest["files"]:
            raise ManifestError(f"{path}: {what} {rel!r} is not among the files the manifest hashes")
    if trust is not None:
        extra = sorted(str(p.relative_to(directory)) for p in directory.rglob("*")
                       if (p.is_file() or p.is_symlink()) and p.name not in (MANIFEST, SIGNATURE)
                       and str(p.relative_to(directory)) not in manifest["files"])
        if extra:
            raise ManifestError(f"{directory}: {extra[0]} is not listed in the signed manifest (expected only the "
                                f"signed files in a trusted directory; {len(extra)} unlisted)")
    library = manifest["backend_library"]
    built = manifest["versions"].get(library)
    here = (installed_versions or {}).get(library)
    if installed_versions is not None and _major_minor(built) != _major_minor(here):
        raise ManifestError(f"{directory} was built with {library} {built}; this machine has {library} {here}")
    return manifest


def confined(directory: Path, rel: object, what: str) -> Path:
    """`directory`/`rel`, refused unless `rel` is a relative path without '..' that resolves (symlinks
    followed) inside the directory."""
    where = f"{directory / MANIFEST}: {what} {str(rel)[:120]!r}"
    if not isinstance(rel, str) or not rel or "\x00" in rel or "\\" in rel:
        raise ManifestError(f"{where}: expected a relative path inside the engine directory")
    parts = PurePosixPath(rel)
    if parts.is_absolute() or ".." in parts.parts:
        raise ManifestError(f"{where}: expected a path inside the engine directory, got "
                            f"{'an absolute path' if parts.is_absolute() else 'one that climbs out with ..'}")
    full = directory / parts
    root, real = directory.resolve(), full.resolve()
    if real != root and root not in real.parents:
        raise ManifestError(f"{where}: resolves to {real}, outside the engine directory {root} (a symlink?)")
    return full


_TOP = {"preset": dict, "backend": str, "backend_library": str, "precision": str, "target": dict, "versions": dict,
        "weights": dict, "stages": dict, "initial_state": str, "files": dict}
_OPTIONAL = {
    "attention": lambda v: v is None or isinstance(v, str),
    "kv_cache": lambda v: isinstance(v, dict) and v.get("dtype") in DTYPES and isinstance(v.get("scales"), (str, type(None))),
    "calibration": lambda v: isinstance(v, dict),
    "exported_from": lambda v: isinstance(v, str),
}
_OPTIONAL_WHAT = {"attention": "a string or null", "kv_cache": f"{{dtype: one of {list(DTYPES)}, scales: string or null}}",
                  "calibration": "a JSON object", "exported_from": "a string"}


def check_structure(manifest: dict, path: Path) -> None:
    """The manifest has the shape `streamer build` writes, and every number in it is within bounds
    (unitio.limits): the preset JSON, each stage's tensor names, shapes and dtypes, the file hashes."""
    def need(ok: bool, what: str, got: object) -> None:
        if not ok:
            raise ManifestError(f"{path}: {what}, got {str(got)[:100]!r}")

    for key, kind in _TOP.items():
        need(isinstance(manifest.get(key), kind), f"{key}: expected a JSON {kind.__name__.replace('str', 'string')}",
             manifest.get(key))
    p = manifest["preset"]
    need(isinstance(p.get("name"), str) and isinstance(p.get("json"), str), "preset: expected {name, json} strings", p)
    try:
        fields = loads_bounded(p["json"], 65_536, 4)
    except ValueError:
        fields = None
    problem = preset_problem(fields)
    need(problem is None and fields["name"] == p["name"], f"preset.json: {problem or 'expected the same name'}", p["json"])
    need(isinstance(manifest["target"].get("device"), str), "target.device: expected a string", manifest["target"])
    for key, ok in _OPTIONAL.items():  # fields later builds added: absent in older manifests, typed when present
        need(key not in manifest or ok(manifest[key]), f"{key}: expected {_OPTIONAL_WHAT[key]}", manifest.get(key))
    need(all(isinstance(v, (str, type(None))) for v in manifest["versions"].values()),
         "versions: expected library -> version string", manifest["versions"])
    files = manifest["files"]
    need(all(isinstance(v, str) and len(v) == 64 and all(c in "0123456789abcdef" for c in v) for v in files.values()),
         "files: expected path -> SHA-256 (64 hex digits)", files)
    stages = manifest["stages"]
    need(set(stages) == set(STAGES), f"stages: expected {list(STAGES)}", sorted(stages))
    for name, info in stages.items():
        need(isinstance(info, dict) and isinstance(info.get("file"), str) and isinstance(info.get("precision"), str)
             and isinstance(info.get("inputs"), list) and isinstance(info.get("outputs"), list)
             and isinstance(info.get("attention"), (str, type(None))),
             f"stages.{name}: expected {{file, precision, inputs, outputs[, attention]}}", info)
        for side in ("inputs", "outputs"):
            need(0 < len(info[side]) <= 256, f"stages.{name}.{side}: expected 1 to 256 tensors", len(info[side]))
            for t in info[side]:
                need(isinstance(t, dict) and isinstance(t.get("name"), str) and 0 < len(t["name"]) <= 128,
                     f"stages.{name}.{side}: expected {{name, shape, dtype}} entries", t)
                problem = shape_problem(t.get("shape"), t.get("dtype"))
                need(problem is None, f"stages.{name}.{side}.{t['name']}: {problem}", t)


def sign_directory(directory: str | Path, private_key: Path) -> str:
    """Sign a checked engine directory with an Ed25519 private key (writes manifest.sig); returns the key id."""
    read_manifest(directory)  # never sign a directory that does not check
    return sign_manifest(directory, (Path(directory) / MANIFEST).read_bytes(), private_key)


def stage_io(manifest: dict, stage: str) -> tuple[list[TensorSpec], list[TensorSpec]]:
    s = manifest["stages"][stage]
    return [TensorSpec.from_json(t) for t in s["inputs"]], [TensorSpec.from_json(t) for t in s["outputs"]]


def _major_minor(version: str | None) -> tuple[str, ...] | None:
    return tuple(version.split(".")[:2]) if version else None
