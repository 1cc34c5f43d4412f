"""Benchmark: the per-unit KV transfer of the thinker-performer runtime, for every preset.

    python bench/transfer.py [--repeats 200] [--dtype float32]

Per unit the thinker copies its KV delta [L, 1, Hkv, tokens_per_unit, D] (keys + values) into a
shared-memory slot (`SharedSlots`), and the performer appends it from there into its cache (the same
strided slice write as `KVBuffers.append`); plus the round trip of the 8-byte messages between two
processes. Shapes come from the presets, so base/large need no engines; the destination cache holds
sink + 2 window units (the write's cost does not depend on the capacity). CPU path only: on a GPU the
slot is page-locked and the append is a host-to-device copy (not measured here).
"""
from __future__ import annotations

import argparse
import platform
import socket
import subprocess
import sys
from dataclasses import replace
from multiprocessing.connection import Connection
from types import SimpleNamespace

import numpy as np

from model_src.config import PRESETS
from runtime.host.kv_cache import KVBuffers
from runtime.host.transport import SharedSlots
from unitio.timing import median_ms

ECHO = "import sys; from multiprocessing.connection import Connection; c = Connection(int(sys.argv[1]))\n" \
       "while True:\n    m = c.recv_bytes()\n    c.send_bytes(m)\n    if m == b'stop': break"


def message_round_trip_us(repeats: int) -> float:
    ours, theirs = socket.socketpair()
    child = subprocess.Popen([sys.executable, "-c", ECHO, str(theirs.fileno())], pass_fds=(theirs.fileno(),))
    theirs.close()
    conn = Connection(ours.detach())
    msg = b"\x01\x00\x00\x00" + bytes(8)

    def ping() -> None:
        conn.send_bytes(msg)
        conn.recv_bytes()

    us = 1000 * median_ms(ping, repeats)
    conn.send_bytes(b"stop")
    conn.recv_bytes()
    child.wait()
    return us


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=200)
    ap.add_argument("--dtype", default="float32", help="cache dtype (the engines' cache is float32 on a CPU)")
    args = ap.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, python {platform.python_version()}")
    print(f"message round trip (8-byte op + unit, two processes): {message_round_trip_us(args.repeats):.1f} us\n")
    print("| preset | KV delta per unit | slot write (thinker) | append (performer) | transfer per unit | GB/s |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, p in PRESETS.items():
        small = replace(p, window_units=2)
        delta = (p.n_layers, 1, p.n_kv_heads, p.tokens_per_unit, p.head_dim)
        spec = SimpleNamespace(cache_shape=(p.n_layers, 1, p.n_kv_heads, small.cache_capacity, p.head_dim),
                               cache_dtype=args.dtype, unit_tokens=p.tokens_per_unit,
                               sink_units=small.sink_units, window_units=small.window_units)
        layout = {"k_delta": (delta, args.dtype), "v_delta": (delta, args.dtype)}
        slots, cache = SharedSlots.create(layout), KVBuffers(spec)
        k_delta = np.random.default_rng(0).standard_normal(delta).astype(args.dtype)
        v_delta = k_delta + 1

        def write() -> None:
            slots.view(0, "k_delta")[...] = k_delta
            slots.view(0, "v_delta")[...] = v_delta

        unit = iter(range(10**9))
        append = lambda: cache.append(next(unit), slots.view(0, "k_delta"), slots.view(0, "v_delta"))  # noqa: E731
        w, a = median_ms(write, args.repeats), median_ms(append, args.repeats)
        nbytes = 2 * k_delta.nbytes
        print(f"| {name} | {nbytes / 2**20:.2f} MiB | {w:.3f} ms | {a:.3f} ms | {w + a:.3f} ms | "
              f"{2 * nbytes / (w + a) / 1e6:.1f} |")
        slots.close()


if __name__ == "__main__":
    main()
