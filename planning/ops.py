"""The kernels one call of a stage launches, recorded on meta tensors (no memory, no time).

A `TorchDispatchMode` sees every aten op of the call. Views cost nothing and launch nothing. Each
matmul or convolution is one kernel: its FLOPs (torch's flop registry) and the bytes it reads and
writes. Everything else (norms, activations, RoPE, residual adds, casts, upsampling, concatenations,
copies) is elementwise work, priced as memory traffic only; consecutive elementwise ops between two
GEMM/attention kernels are fused into one kernel, as TensorRT and Inductor fuse pointwise chains: its
traffic is the tensors it reads from outside the chain plus the tensors it writes that are read later
(or returned). One attention call (`model_src.attention.attend`) is one fused attention: the FLOPs of
its matmuls, and the bytes of q, the whole cache, the local keys and the output; two launches (the
Triton kernel's partial and combine programs).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import flop_registry

# ops that allocate without writing (no kernel) or only move metadata
_FREE = {"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "detach", "lift_fresh",
         "alias", "_local_scalar_dense", "sym_size", "sym_stride", "sym_numel", "sym_storage_offset", "size",
         "stride", "dim", "is_contiguous"}
_ALIASES = {"detach", "lift_fresh", "alias"}  # free ops whose output is their input
_FACTORY = {"new_zeros", "new_ones", "new_full", "zeros_like", "ones_like", "full_like", "zeros", "ones", "full",
            "arange", "scalar_tensor", "fill"}  # write their output, read nothing
_GATHER = {"embedding", "index_select", "gather", "index"}  # read only the rows they return


@dataclass
class Kernel:
    """One launched kernel: kind "gemm" | "conv" | "attention" | "elementwise"; bytes read + written."""
    part: str
    kind: str
    flops: float
    bytes: float
    weight_bytes: float = 0.0
    cache_bytes: float = 0.0
    launches: int = 1
    ops: int = 1  # aten ops it stands for (eager PyTorch would launch about this many)
    lm_head: bool = False
    codec: bool = False  # a codec's kernel: fp32 as TF32, at the codec efficiency
    reads: tuple = ()  # root keys of the tensors a fused attention reads (for the chains before it)


@dataclass
class _Op:
    name: str
    part: str
    flops: float
    reads: list[tuple[int, float]]  # (root key, bytes)
    writes: list[tuple[int, float]]
    gemm: bool
    lm_head: bool


def _nbytes(t: torch.Tensor) -> float:
    return float(t.numel() * t.element_size())


class Recorder(TorchDispatchMode):
    """Records the aten ops of a call. `part` labels what runs now; `weights` are parameter tensors."""

    def __init__(self, weights: set[int]) -> None:
        super().__init__()
        self.weights = weights
        self.part = "main"
        self.lm_head = False
        self.ops: list[_Op | Kernel] = []
        self.roots: dict[int, int] = {}  # tensor id -> id of the tensor it views
        self.keep: list[torch.Tensor] = []  # holds every tensor seen, so ids are never reused
        self._attention_start = 0
        self._fresh = -(1 << 62)  # keys of replayed tensors (below every id and gather key)

    def root(self, t: torch.Tensor) -> int:
        k = id(t)
        return self.roots.get(k, k)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        self._record(func, args, kwargs, out)
        return out

    def _record(self, func, args, kwargs, out) -> None:
        name = func.__name__.split(".")[0]
        ins = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        outs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        self.keep.extend(ins + outs)
        if func.is_view or name in _FREE:
            if ins and (func.is_view or name in _ALIASES):
                for t in outs:
                    self.roots[id(t)] = self.root(ins[0])
            return
        packet = func.overloadpacket
        gemm = packet in flop_registry
        flops = float(flop_registry[packet](*args, **kwargs, out_val=out)) if gemm else 0.0
        if name in _FACTORY:
            reads = []
        elif name in _GATHER:
            reads = [(self.root(t), _nbytes(t)) for t in ins if t.dtype in (torch.int64, torch.int32)]
            reads += [(-id(outs[0]), sum(_nbytes(o) for o in outs))]  # the rows gathered, never a chain's output
        else:
            reads = [(self.root(t), _nbytes(t)) for t in ins]
        mutated = func._schema.is_mutable
        writes = [(self.root(t) if mutated else id(t), _nbytes(t)) for t in outs]
        self.ops.append(_Op(name, self.part, flops, reads, writes, gemm, self.lm_head))

    def replay(self, start: int, end: int, inputs: list[int], outputs: list[int], new_inputs: list[int],
               new_outputs: list[int]) -> None:
        """Append a copy of ops[start:end] (one decoder layer) as if run again on `new_inputs` giving
        `new_outputs` (root keys, paired with `inputs`/`outputs`); what the copy makes gets fresh keys."""
        mapping = dict(zip(inputs, new_inputs)) | dict(zip(outputs, new_outputs))
        for o in self.ops[start:end]:
            for key, _ in (o.writes if isinstance(o, _Op) else ()):
                if key not in mapping:
                    self._fresh -= 1
                    mapping[key] = self._fresh
        for o in self.ops[start:end]:
            if isinstance(o, _Op):
                self.ops.append(dataclasses.replace(o, reads=[(mapping.get(k, k), nb) for k, nb in o.reads],
                                                    writes=[(mapping.get(k, k), nb) for k, nb in o.writes]))
            else:
                self.ops.append(dataclasses.replace(o, reads=tuple(mapping.get(k, k) for k in o.reads)))

    def start_attention(self) -> None:
        """Mark the start of one attention call (its ops become one kernel at `end_attention`)."""
        self._attention_start = len(self.ops)

    def end_attention(self, q, cache_k, cache_v, local_k, local_v, out, cache_scale: float) -> None:
        """Replace the ops recorded since `start_attention` by one fused attention kernel."""
        inner = self.ops[self._attention_start:]
        del self.ops[self._attention_start:]
        flops = sum(o.flops for o in inner if isinstance(o, _Op))
        cache = cache_scale * (_nbytes(cache_k) + _nbytes(cache_v))
        moved = _nbytes(q) + _nbytes(local_k) + _nbytes(local_v) + _nbytes(out)
        self.keep.append(out)
        reads = tuple(self.root(t) for t in (q, cache_k, cache_v, local_k, local_v))
        self.ops.append(Kernel(self.part, "attention", flops, cache + moved, 0.0, cache, launches=2, ops=len(inner),
                               reads=reads))


def fuse(ops: list, outputs: list[torch.Tensor], weights: set[int], weight_scale: float,
         lm_head_scale: float) -> list[Kernel]:
    """Turn recorded ops into kernels: each GEMM/conv one kernel, each run of elementwise ops one fused one.

    weight_scale rescales the bytes of weights a GEMM reads (fp8 weights are 1 byte in a bf16 meta run);
    lm_head_scale those of the LM head (kept at bf16 by FP8 builds)."""
    consumers: dict[int, list[int]] = {}
    for i, o in enumerate(ops):
        for key in (k for k, _ in o.reads) if isinstance(o, _Op) else o.reads:
            consumers.setdefault(key, []).append(i)
    returned = {id(t) for t in outputs}
    kernels: list[Kernel] = []
    chain: list[int] = []

    def close() -> None:
        if not chain:
            return
        inside = set(chain)
        produced: dict[int, float] = {}
        for i in chain:
            produced.update(dict(ops[i].writes))
        read = {}
        for i in chain:
            for key, nb in ops[i].reads:
                if key not in produced:
                    read[key] = nb
        written = sum(nb for key, nb in produced.items()
                      if key in returned or any(c not in inside for c in consumers.get(key, [])
                                                           if c > min(chain)))
        first = ops[chain[0]]
        kernels.append(Kernel(first.part, "elementwise", 0.0, sum(read.values()) + written,
                              sum(nb for key, nb in read.items() if key in weights), ops=len(chain)))
        chain.clear()

    for i, o in enumerate(ops):
        if isinstance(o, Kernel):
            close()
            kernels.append(o)
        elif o.gemm:
            close()
            scale = lm_head_scale if o.lm_head else weight_scale
            w = sum(nb for key, nb in o.reads if key in weights)
            act = sum(nb for key, nb in o.reads if key not in weights) + sum(nb for _, nb in o.writes)
            kind = "conv" if "conv" in o.name else "gemm"
            kernels.append(Kernel(o.part, kind, o.flops, scale * w + act, scale * w, lm_head=o.lm_head))
        else:
            chain.append(i)
    close()
    return kernels
