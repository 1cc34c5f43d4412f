"""Weights as safetensors only (never pickle), with the preset recorded in the file's metadata.

The metadata is data: its preset JSON is checked against bounds (unitio.limits), a named preset's own
numbers and the tensors in the header before any model is built from it; NaN/Inf weights are refused.
Also imports a real Qwen3 checkpoint (transformers' safetensors layout and config.json, from a local
folder) into the backbone, refusing dimensions, a tie of the embeddings or a tensor that does not fit.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from unitio.jsonsafe import loads_bounded
from unitio.limits import preset_problem

from .backbone import Backbone, qwen3_state_dict_to_backbone
from .config import PRESETS, Preset

FORMAT = "av-streamer-weights/1"
_ST_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
              torch.int64: "I64", torch.int32: "I32", torch.bool: "BOOL"}


class WeightsError(ValueError):
    """A weights file that does not fit the model it is loaded into."""


def _unique_state(module: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors to save, alias -> saved name) with tied tensors stored once."""
    tensors, aliases, seen = {}, {}, {}
    for name, t in module.state_dict().items():
        key = (t.data_ptr(), t.shape, t.stride()) if t.device.type != "meta" else None
        if key is not None and key in seen:
            aliases[name] = seen[key]
            continue
        if key is not None:
            seen[key] = name
        tensors[name] = t.detach().contiguous()
    return tensors, aliases


def save_weights(module: nn.Module, preset: Preset, path: str | Path) -> None:
    """Write the module's weights to `path` (safetensors) with the preset in the metadata (a new file
    renamed over `path`: a link there is replaced, never written through)."""
    from unitio.growing import write_replacing

    tensors, aliases = _unique_state(module)
    meta = {"format": FORMAT, "preset": preset.name, "preset_json": preset.to_json(), "aliases": json.dumps(aliases)}
    write_replacing(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))


def _read_header(path: Path) -> tuple[dict[str, str], dict[str, tuple[tuple[int, ...], str]]]:
    """(metadata, {tensor: (shape, safetensors dtype)}) from a safetensors header; no tensor is read."""
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            header = {}
            for name in f.keys():
                s = f.get_slice(name)
                header[name] = (tuple(s.get_shape()), s.get_dtype())
    except Exception as e:  # safetensors raises its own error types for a damaged header
        raise WeightsError(f"{path} is not a readable safetensors file: {e}") from None
    return meta, header


def _preset_from_meta(path: Path, meta: dict[str, str]) -> Preset:
    """The metadata's preset, after its JSON is checked against the bounds (unitio.limits) and, for a
    preset name of ours, against that preset's numbers."""
    text = meta.get("preset_json")
    if not isinstance(text, str) or len(text) > 65_536:
        raise WeightsError(f"{path}: expected a preset_json entry (the preset as JSON) in the metadata, "
                           f"found {'none' if text is None else f'{len(text)} characters'}")
    try:
        fields = loads_bounded(text, 65_536, 4)
    except ValueError as e:
        raise WeightsError(f"{path}: preset_json: expected JSON, got {text[:60]!r} ({e})") from None
    problem = preset_problem(fields)
    if problem:
        raise WeightsError(f"{path}: preset_json: {problem}")
    try:
        preset = Preset.from_json(text)
    except (TypeError, ValueError) as e:
        raise WeightsError(f"{path}: preset_json is not a consistent preset: {e}") from None
    if meta.get("preset") != preset.name:
        raise WeightsError(f"{path}: the metadata names preset {meta.get('preset')!r} but its preset_json is "
                           f"{preset.name!r}")
    known = PRESETS.get(preset.name)
    if known is not None and known != preset:
        diffs = [f"{f.name} {getattr(preset, f.name)!r} (expected {getattr(known, f.name)!r})"
                 for f in dataclasses.fields(Preset) if getattr(preset, f.name) != getattr(known, f.name)]
        raise WeightsError(f"{path}: says preset {preset.name!r} but its numbers are not that preset's: "
                           f"{', '.join(diffs[:4])}; a variant needs a name of its own")
    return preset


def _aliases(path: Path, meta: dict[str, str]) -> dict[str, str]:
    try:
        aliases = loads_bounded(meta.get("aliases", "{}"), 1 << 20, 2)
    except ValueError:
        aliases = None
    if not isinstance(aliases, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in aliases.items()):
        raise WeightsError(f"{path}: aliases: expected a JSON object of tensor name -> stored tensor name, "
                           f"got {meta.get('aliases', '')[:60]!r}")
    return aliases


def _check_header(path: Path, preset: Preset, header: dict, aliases: dict[str, str]) -> None:
    """The file's tensor names, shapes and dtypes (header only) against a model of `preset` built on the
    meta device (shapes, no memory)."""
    from .system import build_system

    expected = build_system(preset, device="meta").state_dict()
    for alias, target in aliases.items():
        if target not in header or alias in header:
            raise WeightsError(f"{path}: alias {alias!r} -> {target!r}: expected an alias of a stored tensor, "
                               f"{'it is stored itself' if alias in header else 'no such tensor is stored'}")
    stored = set(header) | set(aliases)
    unknown, missing = sorted(stored - set(expected)), sorted(set(expected) - stored)
    if unknown:
        raise WeightsError(f"{path}: tensor {unknown[0]!r} is not a parameter of a {preset.name} model")
    if missing:
        raise WeightsError(f"{path}: missing {len(missing)} tensors of a {preset.name} model, first {missing[:3]}")
    for name, want in expected.items():
        shape, dtype = header[aliases.get(name, name)]
        if shape != tuple(want.shape):
            raise WeightsError(f"{path}: tensor {name!r} has shape {shape}, preset {preset.name} expects "
                               f"{tuple(want.shape)}")
        if dtype != _ST_DTYPES.get(want.dtype, dtype):
            raise WeightsError(f"{path}: tensor {name!r} is {dtype}, the model expects {_ST_DTYPES[want.dtype]}")


def read_preset(path: str | Path) -> Preset:
    """The preset a weights file was made for, checked before anything is allocated: the metadata's
    format, preset JSON (bounds, and a named preset's own numbers) and aliases, and every tensor's name,
    shape and dtype in the header against that preset (no tensor is read)."""
    path = Path(path)
    meta, header = _read_header(path)
    if meta.get("format") != FORMAT:
        raise WeightsError(f"{path}: expected weights format {FORMAT!r}, found {meta.get('format')!r}")
    preset = _preset_from_meta(path, meta)
    _check_header(path, preset, header, _aliases(path, meta))
    return preset


def load_weights(module: nn.Module, preset: Preset, path: str | Path) -> None:
    """Load `path` into `module` (in place) after checking preset, names and shapes; NaN/Inf is refused."""
    found = read_preset(path)
    if found != preset:
        what = "differs in its settings" if found.name == preset.name else f"was made for preset {found.name!r}"
        raise WeightsError(f"weights file {path} {what}, but the model is preset {preset.name!r}")
    aliases = _aliases(Path(path), _read_header(Path(path))[0])
    tensors = _load_file(Path(path))
    for alias, name in aliases.items():
        tensors[alias] = tensors[name]
    _load_checked(module, tensors, str(path))


def _load_file(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except Exception as e:  # a damaged file: safetensors' own error types
        raise WeightsError(f"{path} is not a readable safetensors file: {e}") from None


def _check_finite(tensors: dict[str, torch.Tensor], source: str) -> None:
    for name, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise WeightsError(f"{source}: tensor {name!r} holds {bad} NaN/Inf values (expected finite weights)")


def _load_checked(module: nn.Module, tensors: dict[str, torch.Tensor], source: str, strict: bool = True) -> None:
    expected = module.state_dict()
    for name, want in expected.items():  # in the model's order, so the first mismatch named is the first
        if name in tensors and tuple(tensors[name].shape) != tuple(want.shape):
            raise WeightsError(f"{source}: tensor {name!r} has shape {tuple(tensors[name].shape)}, "
                               f"the model expects {tuple(want.shape)}")
    unknown = [name for name in tensors if name not in expected]
    if unknown:
        raise WeightsError(f"{source}: tensor {unknown[0]!r} is not a parameter of the model")
    missing = sorted(set(expected) - set(tensors))
    if strict and missing:
        raise WeightsError(f"{source}: missing {len(missing)} tensors, first {missing[:3]}")
    _check_finite(tensors, source)
    module.load_state_dict(tensors, strict=strict)


def read_checkpoint(path: str | Path, what: str) -> dict[str, torch.Tensor]:
    """All tensors of a local safetensors file, or of every *.safetensors file in a folder."""
    path = Path(path)
    files = sorted(path.glob("*.safetensors")) if path.is_dir() else [path]
    if not path.exists():
        raise WeightsError(f"{what} checkpoint {path} does not exist")
    if not files:
        raise WeightsError(f"no *.safetensors files in {path} (expected a {what} checkpoint)")
    bad = [f.name for f in files if f.suffix != ".safetensors"]
    if bad:
        raise WeightsError(f"{what} checkpoint {bad[0]}: only .safetensors files are read (never pickle)")
    tensors = {}
    for f in files:
        tensors.update(_load_file(f))
    return tensors


def _qwen3_config(folder: Path) -> dict:
    """config.json of a transformers Qwen3 checkpoint folder, as a dict."""
    path = folder / "config.json" if folder.is_dir() else folder.parent / "config.json"
    if not path.is_file():
        raise WeightsError(f"{path}: expected the checkpoint's config.json (transformers writes it beside the "
                           f"safetensors), found none")
    try:
        cfg = loads_bounded(path.read_bytes()[:(1 << 20) + 1], 1 << 20, 16)
    except ValueError as e:
        raise WeightsError(f"{path}: expected JSON, got an error: {e}") from None
    if not isinstance(cfg, dict):
        raise WeightsError(f"{path}: expected a JSON object, got {type(cfg).__name__}")
    return cfg


def check_qwen3_config(backbone: Backbone, folder: str | Path) -> bool:
    """Compare a Qwen3 checkpoint's config.json with `backbone`'s dimensions (refused by name when one
    differs); returns the checkpoint's tie_word_embeddings."""
    folder = Path(folder)
    if not folder.exists():
        raise WeightsError(f"Qwen3 checkpoint {folder} does not exist (expected a folder with config.json and "
                           f"*.safetensors)")
    cfg, path = _qwen3_config(folder), folder / "config.json" if folder.is_dir() else folder.parent / "config.json"
    attn = backbone.layers[0].self_attn
    want = {"vocab_size": backbone.embed_tokens.num_embeddings, "hidden_size": backbone.embed_tokens.embedding_dim,
            "intermediate_size": backbone.layers[0].mlp.gate_proj.out_features,
            "num_hidden_layers": len(backbone.layers), "num_attention_heads": attn.n_heads,
            "num_key_value_heads": attn.n_kv_heads, "head_dim": attn.head_dim, "rms_norm_eps": backbone.norm.eps}
    if cfg.get("model_type") not in ("qwen3", None):
        raise WeightsError(f"{path}: expected model_type 'qwen3', got {cfg.get('model_type')!r}")
    for key, value in want.items():
        if cfg.get(key) != value:
            raise WeightsError(f"{path}: {key} is {cfg.get(key)!r}, the model's preset has {value!r}")
    rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    theta = rope.get("rope_theta", cfg.get("rope_theta")) if isinstance(rope, dict) else None
    kind = rope.get("rope_type", "default") if isinstance(rope, dict) else rope
    if kind not in ("default", None):
        raise WeightsError(f"{path}: rope_type {kind!r}: expected the default RoPE (no scaling)")
    from .rope import inv_frequencies

    if not isinstance(theta, (int, float)) or not torch.allclose(inv_frequencies(attn.head_dim, float(theta)),
                                                                backbone.rope_inv_freq.cpu(), rtol=1e-6):
        raise WeightsError(f"{path}: rope_theta is {theta!r}, which is not the model's preset's")
    tie = cfg.get("tie_word_embeddings", True)
    if not isinstance(tie, bool):
        raise WeightsError(f"{path}: tie_word_embeddings: expected true or false, got {tie!r}")
    return tie


def load_qwen3_checkpoint(backbone: Backbone, folder: str | Path) -> None:
    """Load a local transformers Qwen3 checkpoint (config.json + *.safetensors) into `backbone` in place.

    Dimensions come from config.json and must be the preset's. Embedding ties: a tied checkpoint goes
    into an untied preset by copying the embedding into the LM head; an untied one (its lm_head differs
    from its embedding) into a tied preset is refused, since one of the two would overwrite the shared
    matrix."""
    tied_checkpoint = check_qwen3_config(backbone, folder)
    state = qwen3_state_dict_to_backbone(read_checkpoint(folder, "Qwen3"))
    tied_model = backbone.lm_head.weight is backbone.embed_tokens.weight
    head, embed = state.get("lm_head.weight"), state.get("embed_tokens.weight")
    own_head = head is not None and not (embed is not None and head.shape == embed.shape and torch.equal(head, embed))
    if not tied_checkpoint and head is None:
        raise WeightsError(f"{folder}: tie_word_embeddings is false but the checkpoint has no lm_head.weight")
    if tied_model and own_head:
        raise WeightsError(f"{folder}: an untied checkpoint (its lm_head.weight differs from its embedding) cannot "
                           f"go into a preset whose LM head is its embedding: one would overwrite the other; use a "
                           f"preset with tie_embeddings=False")
    if embed is not None and (tied_model or head is None):
        # tied model: one matrix under both names; untied model from a tied checkpoint: the head starts as a copy
        state["lm_head.weight"] = embed if tied_model else embed.clone()
    _load_checked(backbone, state, str(folder))


def load_mimi_checkpoint(audio_vae: nn.Module, path: str | Path) -> None:
    """Load the SEANet encoder/decoder convs of a local transformers Mimi checkpoint into an AudioVAE.

    Accepts both layouts transformers has used ("encoder.layers.*" and "encoder.encoder_seanet.layers.*").
    Mimi's transformers and quantizer are not part of our VAE; our Gaussian head (to_latent /
    from_latent) is left as it is.
    """
    state = {}
    for name, t in read_checkpoint(path, "Mimi").items():
        for side in ("encoder", "decoder"):
            for prefix in (f"{side}.layers.", f"{side}.{side}_seanet.layers."):
                if name.startswith(prefix):
                    state[f"{side}.layers." + name[len(prefix):]] = t
    needed = {n for n in audio_vae.state_dict() if n.startswith(("encoder.", "decoder."))}
    missing = sorted(needed - set(state))
    if missing:
        raise WeightsError(f"{path}: not a Mimi checkpoint of this shape, missing {missing[:3]}")
    _load_checked(audio_vae, state, str(path), strict=False)


EMBEDDED = {"tiny": "tiny.safetensors", "tiny-speech": "tiny-speech.safetensors"}  # preset -> trained weights shipped in model_src/trained/


def embedded_weights(preset_name: str) -> Path | None:
    """The trained weights shipped inside the package for this preset (the default of `--preset tiny`),
    or None where the preset ships none. Raises if the package should hold them but does not."""
    if preset_name not in EMBEDDED:
        return None
    path = Path(__file__).resolve().parent / "trained" / EMBEDDED[preset_name]
    if not path.is_file():
        raise WeightsError(f"the embedded {preset_name} weights {path} are missing from this installation "
                           f"(reinstall the package, or pass --weights-seed N for random weights)")
    return path


def load_wan_vae_checkpoint(video_vae: nn.Module, path: str | Path) -> None:
    """Load a local diffusers AutoencoderKLWan checkpoint (Wan2.1 VAE, safetensors) into a VideoVAE."""
    _load_checked(video_vae, read_checkpoint(path, "Wan VAE"), str(path))
