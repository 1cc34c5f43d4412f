"""The performer's work on a device: N Euler steps of flow_step from the unit's seeded noise, the
latents and the update resident on the device (one call; a CUDA graph on a GPU).

The same arithmetic as runtime/host/solver.py and model_src.flow.euler_solve (rectified flow, t from 0 to
1 in equal steps, y <- y + dt * v in float32), so a device session's outputs equal the reference's.
flow_step is bound once per step (each step's t is its own constant tensor), the latents it reads are
cast to its input dtype on the device (bf16 builds), the velocity comes back in float32.
"""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch

from unitio.units import unit_noise

from .device import Device, host_view, torch_dtype
from .engines import DeviceEngine
from .ledger import TransferLedger
from .state import DeviceKVCache


class DeviceSolver:
    def __init__(self, engine: DeviceEngine, spec: SimpleNamespace, device: Device, cache: DeviceKVCache,
                 ledger: TransferLedger, seed: int) -> None:
        self.spec, self.device, self.ledger, self.seed = spec, device, ledger, seed
        dtypes = {t.name: torch_dtype(t.dtype) for t in engine.inputs}
        n = spec.flow_steps
        self.dt = 1.0 / n
        self.y_audio = device.empty(spec.audio_latent_shape, torch.float32)  # the solver's state, fp32
        self.y_video = device.empty(spec.video_latent_shape, torch.float32)
        # host noise slots, double-buffered: unit k+1's noise is written while unit k's copy may be queued
        self.noise_host = [(device.host(spec.audio_latent_shape, torch.float32),
                            device.host(spec.video_latent_shape, torch.float32),
                            device.host((spec.audio_latent_shape[0],), torch.int64)) for _ in range(2)]
        self.noise_copied = [device.event(), device.event()]
        self._loads = 0
        self.unit = device.empty((spec.audio_latent_shape[0],), torch.int64)
        self.x_audio = self._input(self.y_audio, dtypes["noisy_audio"])
        self.x_video = self._input(self.y_video, dtypes["noisy_video"])
        self.velocity = engine.allocate_outputs()
        self._scratch = {k: torch.empty_like(v) for k, v in self.velocity.items()}
        rows = spec.audio_latent_shape[0]
        times = [torch.full((rows,), i * self.dt, dtype=torch.float32) for i in range(n)]
        self.t = [device.empty((rows,), torch.float32) for _ in range(n)]
        for dst, src in zip(self.t, times):  # constants: copied once, at session start
            dst.copy_(src)
        cache_feeds = cache.feeds([t.name for t in engine.inputs])
        self._steps = [engine.bind({"noisy_audio": self.x_audio, "noisy_video": self.x_video, "t": t, **cache_feeds,
                                    "unit_index": self.unit}, self.velocity) for t in self.t]
        self._solve = self._solve_steps
        self.capturable = engine.can_capture

    def _input(self, y: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return y if dtype == torch.float32 else self.device.empty(y.shape, dtype)

    def _solve_steps(self) -> None:
        va, vv = self.velocity["v_audio"], self.velocity["v_video"]
        sa, sv = self._scratch["v_audio"], self._scratch["v_video"]
        for step in self._steps:
            if self.x_audio is not self.y_audio:
                self.x_audio.copy_(self.y_audio)
            if self.x_video is not self.y_video:
                self.x_video.copy_(self.y_video)
            step()
            torch.mul(va, self.dt, out=sa)  # y + dt * v, rounded as numpy rounds it (no fused multiply-add)
            self.y_audio.add_(sa)
            torch.mul(vv, self.dt, out=sv)
            self.y_video.add_(sv)

    def capture(self, stream) -> None:
        self._solve = self.device.capture(self._solve_steps, stream)

    def load(self, units: int | list[int], seeds: list[int] | None = None) -> None:
        """Each row's seed noise (from (its seed, its unit), as the reference draws it) and unit index onto
        the device (h2d, on the current stream). `units`: one per row (an int for a single session)."""
        units = [units] if isinstance(units, int) else list(units)
        seeds = seeds or [self.seed] * len(units)
        self._loads += 1
        slot = self._loads % 2  # alternates every call, whatever the rows' own units
        self.device.sync(self.noise_copied[slot])  # that slot's last copy (two calls ago) is long done
        ha, hv, hu = self.noise_host[slot]
        row_audio, row_video = (1, *self.spec.audio_latent_shape[1:]), (1, *self.spec.video_latent_shape[1:])
        for row, (seed, unit) in enumerate(zip(seeds, units)):
            na, nv = unit_noise(seed, unit, row_audio, row_video)
            host_view(ha)[row], host_view(hv)[row] = na[0], nv[0]
        host_view(hu)[...] = units
        self.ledger.h2d(self.y_audio, ha)
        self.ledger.h2d(self.y_video, hv)
        self.ledger.h2d(self.unit, hu)
        self.device.record(self.noise_copied[slot], self.device.current_stream())

    def run(self) -> None:
        """The N steps on the device; y_audio / y_video hold y_k after."""
        self._solve()

