"""The performer's work for one unit: N Euler steps of flow_step from the unit's seeded noise.
The same arithmetic as `model_src.flow.euler_solve` (rectified flow, t from 0 to 1), without torch."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from unitio.units import unit_noise

from ..engine import Engine, check_finite
from .kv_cache import KVBuffers


class FlowSolver:
    """`solve(k, cache)` -> clean latents (audio [1, C, Ta], video [1, C, Tv, h, w]) of unit k."""

    def __init__(self, engine: Engine, spec: SimpleNamespace, seed: int) -> None:
        self.engine, self.spec, self.seed = engine, spec, seed
        dt = 1.0 / spec.flow_steps
        self.dt = dt
        self.times = [np.full((1,), i * dt, np.float32) for i in range(spec.flow_steps)]

    def solve(self, unit_index: int, cache: KVBuffers) -> tuple[np.ndarray, np.ndarray]:
        ya, yv = unit_noise(self.seed, unit_index, self.spec.audio_latent_shape, self.spec.video_latent_shape)
        index = np.array([unit_index], np.int64)
        for t in self.times:
            v = self.engine.run({"noisy_audio": ya, "noisy_video": yv, "t": t, **cache.feeds(), "unit_index": index})
            check_finite("flow_step", unit_index, v)
            ya, yv = ya + self.dt * v["v_audio"], yv + self.dt * v["v_video"]
        return ya, yv

    def warm_up(self, cache: KVBuffers) -> float:
        """Run one flow step on the (empty) cache; returns its milliseconds (first runs are slow)."""
        import time

        ya, yv = unit_noise(self.seed, 0, self.spec.audio_latent_shape, self.spec.video_latent_shape)
        t0 = time.perf_counter()
        self.engine.run({"noisy_audio": ya, "noisy_video": yv, "t": self.times[0], **cache.feeds(),
                         "unit_index": np.zeros((1,), np.int64)})
        return 1000.0 * (time.perf_counter() - t0)
