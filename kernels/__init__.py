"""Triton kernels with a PyTorch reference beside each (block-causal attention against a KV cache)."""
