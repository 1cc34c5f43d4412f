"""How far an engine may be from the fp32 torch reference, per precision, and why (`streamer verify`).

Per stage (random inputs in the engine's dtypes; the reference runs on the same values in fp32):
    max_rel        worst |engine - reference| / max |reference| over the stage's outputs (fp32 only)
    min_cosine     worst cosine similarity of an output with the reference's
    min_tokens     fraction of greedy text tokens equal to the reference's (thinker_step)
Per session (`verify --session N`, the runtime's unit path on both sides):
    min_snr_db     SNR of the clean latents y_k against the fp32 reference session

fp32 is the same arithmetic in another order; the others lose mantissa bits per operation, and a
greedy argmax over a near tie may flip (random weights have many near ties; the trained tiny model
is measured in docs/QUANTIZATION.md).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Tolerance:
    max_rel: float | None
    min_cosine: float
    min_tokens: float
    min_snr_db: float
    reason: str


TOLERANCES = {
    "fp32": Tolerance(1e-4, 0.99999, 1.0, 60.0,
                      "the same arithmetic in another order (fused kernels, other reductions): ~1e-6 relative; "
                      "tokens equal"),
    "fp16": Tolerance(None, 0.9995, 0.9, 35.0,
                      "10 mantissa bits: ~5e-4 relative per operation, through up to 28 layers, norms and softmax "
                      "kept in fp32; a token may flip where two logits are within that"),
    "bf16": Tolerance(None, 0.998, 0.85, 25.0,
                      "7 mantissa bits: ~4e-3 relative per operation (8x fp16's), same fp32 norms/softmax; "
                      "more near-tie tokens flip"),
    "int8": Tolerance(None, 0.99, 0.85, 20.0,
                      "8-bit weights per channel and activations per tensor (modelopt, calibrated): held-out "
                      "real inputs, not random ones (docs/QUANTIZATION.md)"),
    "fp8": Tolerance(None, 0.99, 0.85, 20.0,
                     "E4M3: 3 mantissa bits with per-tensor scales (modelopt), or an FP8 KV cache with "
                     "per-head scales: ~6e-2 relative per value, averaged out by the dot products"),
}


def tolerance(precision: str, kv_cache_fp8: bool = False) -> Tolerance:
    """The tolerance of a stage at `precision`; an FP8 KV cache holds it to FP8's (the cache dominates)."""
    if kv_cache_fp8 and precision in ("fp32", "fp16", "bf16"):
        return TOLERANCES["fp8"]
    return TOLERANCES[precision]
