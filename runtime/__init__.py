"""The thinker-performer runtime: runs built engines; imports neither model_src nor torch at import time.

runtime/ holds the engine-directory contract and what both paths share (manifest, signing, spec, the
Engine interface, the worker protocol, the output order, live pacing, trace, bench, open_session);
runtime/host/ the CPU path on numpy (never torch); runtime/device/ the path with its state resident on a
torch device. docs/decisions.md, "How the runtime is laid out", says where to change what.
"""
