"""Weights as safetensors only (never pickle), with the preset recorded in the file's metadata.

Also imports a real Qwen3 checkpoint (transformers' safetensors layout, from a local folder) into the
backbone, refusing any tensor whose shape does not match the preset.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from .backbone import Backbone, qwen3_state_dict_to_backbone
from .config import Preset

FORMAT = "av-streamer-weights/1"


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
    """Write the module's weights to `path` (safetensors) with the preset in the metadata."""
    tensors, aliases = _unique_state(module)
    meta = {"format": FORMAT, "preset": preset.name, "preset_json": preset.to_json(), "aliases": json.dumps(aliases)}
    save_file(tensors, str(path), metadata=meta)


def read_preset(path: str | Path) -> Preset:
    """The preset a weights file was made for (from its metadata)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as e:  # safetensors raises its own error types for a damaged header
        raise WeightsError(f"{path} is not a readable safetensors file: {e}") from None
    if meta.get("format") != FORMAT:
        raise WeightsError(f"{path}: expected weights format {FORMAT!r}, found {meta.get('format')!r}")
    return Preset.from_json(meta["preset_json"])


def load_weights(module: nn.Module, preset: Preset, path: str | Path) -> None:
    """Load `path` into `module` (in place) after checking preset, names and shapes."""
    found = read_preset(path)
    if found != preset:
        what = "differs in its settings" if found.name == preset.name else f"was made for preset {found.name!r}"
        raise WeightsError(f"weights file {path} {what}, but the model is preset {preset.name!r}")
    with safe_open(str(path), framework="pt") as f:
        aliases = json.loads(f.metadata().get("aliases", "{}"))
    tensors = load_file(str(path))
    for alias, name in aliases.items():
        tensors[alias] = tensors[name]
    _load_checked(module, tensors, str(path))


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
        tensors.update(load_file(str(f)))
    return tensors


def load_qwen3_checkpoint(backbone: Backbone, folder: str | Path) -> None:
    """Load a local transformers Qwen3 checkpoint (*.safetensors) into `backbone` in place."""
    state = qwen3_state_dict_to_backbone(read_checkpoint(folder, "Qwen3"))
    if "lm_head.weight" not in state and backbone.lm_head.weight is backbone.embed_tokens.weight:
        state["lm_head.weight"] = state["embed_tokens.weight"]
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


def load_wan_vae_checkpoint(video_vae: nn.Module, path: str | Path) -> None:
    """Load a local diffusers AutoencoderKLWan checkpoint (Wan2.1 VAE, safetensors) into a VideoVAE."""
    _load_checked(video_vae, read_checkpoint(path, "Wan VAE"), str(path))
