"""Session state resident on a device: the KV cache and the codec states, allocated once.

`DeviceKVCache`: cache_k / cache_v [L, B, Hkv, capacity, D] in the build's cache dtype (bf16/fp16/fp32,
or FP8 E4M3 with per-layer, per-KV-head scales), and cache_len [B]; B rows are B independent sessions
(B = 1 but for engines built with `--batch B`), each at its own unit. `append` writes a unit's delta
into its ring slot in place, with the slot computed on the device from the unit index tensor, so the
append is capturable in the thinker's CUDA graph; an FP8 cache quantizes the delta as it writes it
(the same arithmetic as model_src.kv_cache.quantize_fp8). The ring is `unitio.units.cache_slot`, the
one formula the reference (model_src/kv_cache.py) and the host path (runtime/host/kv_cache.py) use:
`sink_units` slots kept, then a window of `window_units` slots.

`PingPong`: a codec's state tensors twice; a call reads one set and writes the other, `flip` after the
unit commits, so a failed unit leaves the state as it was and nothing is copied back.
"""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch

from unitio.names import FP8_E4M3_MAX
from unitio.units import cache_slot

from ..spec import delta_nbytes
from .device import Device, torch_dtype


class DeviceKVCache:
    def __init__(self, spec: SimpleNamespace, device: Device,
                 scales: dict[str, np.ndarray | torch.Tensor] | None = None) -> None:
        self.spec, self.device = spec, device
        self.dtype = torch_dtype(spec.cache_dtype)
        self.fp8 = self.dtype == torch.float8_e4m3fn
        self.k = device.empty(spec.cache_shape, self.dtype)
        self.v = device.empty(spec.cache_shape, self.dtype)
        self.rows = spec.cache_shape[1]  # sessions in the batch (1 but for `streamer build --batch B`)
        self.length = device.empty((self.rows,), torch.int64)
        self.units = spec.sink_units + spec.window_units
        self.append_nbytes = delta_nbytes(spec)  # what one append writes (the ledger's d2d of a unit)
        t = spec.unit_tokens
        self._offsets = torch.arange(t, device=device.torch, dtype=torch.int64)
        if self.fp8:
            if scales is None:
                raise ValueError("an FP8 KV cache needs its scales (kv_cache.k_scale / v_scale in initial_state)")
            k_scale, v_scale = (torch.as_tensor(scales[n]).to(device.torch).float() for n in ("k_scale", "v_scale"))
            self.scales = (k_scale[:, None, :, None, None], v_scale[:, None, :, None, None])
            self._qk = device.empty(spec.delta_shape, self.dtype)  # the quantized delta, reused per unit
            self._qv = device.empty(spec.delta_shape, self.dtype)

    def nbytes(self) -> int:
        return 2 * self.k.numel() * self.k.element_size()

    def feeds(self, names: list[str]) -> dict[str, torch.Tensor]:
        """The cache inputs an engine takes: cache_k, cache_v (stacked) or cache_k_0 ... (one per layer,
        views of the stacked tensors), and cache_len."""
        out = {"cache_len": self.length}
        if "cache_k" in names:
            out.update(cache_k=self.k, cache_v=self.v)
        else:
            for i in range(self.k.shape[0]):
                out[f"cache_k_{i}"], out[f"cache_v_{i}"] = self.k[i], self.v[i]
        return out

    def append(self, unit: torch.Tensor, k_delta: torch.Tensor, v_delta: torch.Tensor) -> None:
        """Write each row's delta ([L, B, Hkv, T, D]) into the slot of its unit (`unit` [B] int64 on the
        device), in place, and set each row's valid length. Device ops only (no host value needed):
        capturable. Rows are independent sessions, each at its own unit."""
        s, w, t = self.spec.sink_units, self.spec.window_units, self.spec.unit_tokens
        positions = cache_slot(unit, s, w)[:, None] * t + self._offsets  # [B, T]
        k, v = self.k, self.v
        if self.fp8:
            self._quantize(self._qk, k_delta, self.scales[0])
            self._quantize(self._qv, v_delta, self.scales[1])
            k_delta, v_delta = self._qk.view(torch.uint8), self._qv.view(torch.uint8)
            k, v = k.view(torch.uint8), v.view(torch.uint8)
        for row in range(self.rows):
            k[:, row].index_copy_(2, positions[row], k_delta[:, row])
            v[:, row].index_copy_(2, positions[row], v_delta[:, row])
        torch.mul(torch.clamp(unit + 1, max=self.units), t, out=self.length)

    def reset_row(self, row: int) -> None:
        """Row `row` empty again (a session joins it): its slots zeroed, its length 0."""
        self.k[:, row].zero_()
        self.v[:, row].zero_()
        self.length[row] = 0

    @staticmethod
    def _quantize(dest: torch.Tensor, delta: torch.Tensor, scale: torch.Tensor) -> None:
        dest.copy_((delta.float() / scale).clamp_(-FP8_E4M3_MAX, FP8_E4M3_MAX))

    def reset(self) -> None:
        """Back to an empty cache (after CUDA-graph warm-up and capture ran the append)."""
        self.k.zero_()
        self.v.zero_()
        self.length.zero_()


class PingPong:
    """A codec stage's state tensors, twice: `current` is read by the next call, `other` written."""

    def __init__(self, device: Device, initial: dict[str, np.ndarray | torch.Tensor]) -> None:
        self.names = sorted(initial, key=lambda n: int(n.split("_")[-1]))
        self.initial = {n: torch.as_tensor(initial[n]).contiguous() for n in self.names}
        self.sets = [{n: device.empty(x.shape, x.dtype) for n, x in self.initial.items()} for _ in range(2)]
        self.parity = 0
        self.reset()

    def reset(self) -> None:
        """The fresh-stream state in set 0 (a one-time copy at session start, not per unit)."""
        for n, x in self.initial.items():
            self.sets[0][n].copy_(x)
        self.parity = 0

    def reset_row(self, row: int) -> None:
        """Row `row` of the set the next call reads back to a fresh stream's state (a session joins it)."""
        for n, x in self.initial.items():
            self.sets[self.parity][n][row].copy_(x[row])

    def binding(self, parity: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """(state inputs, new_state outputs) of a call that reads set `parity` and writes the other."""
        read, write = self.sets[parity], self.sets[1 - parity]
        return dict(read), {f"new_{n}": write[n] for n in self.names}

    def flip(self) -> None:
        self.parity = 1 - self.parity
