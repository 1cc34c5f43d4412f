"""Whether a stage module holds every tensor it computes with on the device it is exported for.

`module.to(device)` moves the parameters and buffers of registered submodules only. A module reached any
other way (a bound method's `__self__`, a plain attribute, a list, a partial) or a tensor kept as a plain
attribute stays where it was, and the export then fails deep inside torch.export with a device mismatch.
`misplaced` finds those tensors by walking the module tree and every attribute of every module in it;
`check_placement` turns them into one error naming the stage and each tensor.
"""
from __future__ import annotations

import functools
import types

import torch
from torch import nn

_INTERNAL = frozenset(vars(nn.Module()))  # torch's own bookkeeping attributes of every module


class PlacementError(ValueError):
    """A stage module holds tensors on another device than the one it is built for."""


def _on(t: torch.Tensor, device: torch.device) -> bool:
    return t.device.type == device.type and (device.index is None or t.device.index == device.index)


def misplaced(module: nn.Module, device: str | torch.device) -> list[str]:
    """Every tensor `module` can reach that is not on `device`: "name (where, how it is held)", one per
    tensor. Registered parameters and buffers, and whatever hides outside the module tree."""
    device = torch.device(device)
    tree = {id(m) for m in module.modules()}
    found: list[str] = []
    seen: set[int] = set()

    def tensor(name: str, t: torch.Tensor, how: str) -> None:
        if not _on(t, device):
            found.append(f"{name} ({t.device}, {how})")

    def registered(prefix: str, m: nn.Module, how: str) -> None:
        for n, p in m.named_parameters():
            tensor(prefix + n, p, how or "parameter")
        for n, b in m.named_buffers():
            tensor(prefix + n, b, how or "buffer")

    def hidden(name: str, value, via: str) -> None:
        if id(value) in seen:
            return
        seen.add(id(value))
        if isinstance(value, torch.Tensor):
            tensor(name, value, f"a plain attribute{via}: .to() does not move it")
        elif isinstance(value, nn.Module):
            if id(value) not in tree:
                registered(name + ".", value, f"a module held{via} outside the module tree: .to() does not move it")
                attributes(name, value, via)
        elif isinstance(value, types.MethodType):
            hidden(name + ".__self__", value.__self__, " by a bound method")
        elif isinstance(value, functools.partial):
            for i, x in enumerate((value.func, *value.args, *value.keywords.values())):
                hidden(f"{name}[{i}]", x, " by a partial")
        elif isinstance(value, (list, tuple, set)):
            for i, x in enumerate(value):
                hidden(f"{name}[{i}]", x, via or " in a container")
        elif isinstance(value, dict):
            for k, x in value.items():
                hidden(f"{name}[{k!r}]", x, via or " in a container")

    def attributes(prefix: str, m: nn.Module, via: str = "") -> None:
        for attr, value in vars(m).items():
            if attr not in _INTERNAL:
                hidden(f"{prefix}.{attr}" if prefix else attr, value, via)

    registered("", module, "")
    for path, m in module.named_modules():
        attributes(path, m)
    return found


def check_placement(stage: str, module: nn.Module, device: str | torch.device) -> None:
    """Raise PlacementError naming `stage` and every tensor of `module` that is not on `device`."""
    wrong = misplaced(module, device)
    if wrong:
        shown = "; ".join(wrong[:5]) + (f"; and {len(wrong) - 5} more" if len(wrong) > 5 else "")
        raise PlacementError(f"stage {stage}: built for {device}, but {len(wrong)} tensor(s) of its module are "
                             f"elsewhere: {shown}. Register every module the stage calls as a submodule and "
                             f"every tensor as a parameter or buffer")
