"""A context that fails on any host read of a tensor value (shared by the no-sync tests)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["forbid_host_sync"]


class _ForbidHostSync(TorchDispatchMode):
    """Fails on every aten op that makes the host wait for the device when the tensors live on an accelerator:
    reading a value (``item``, ``bool``, ``float``: ``_local_scalar_dense``), data-dependent output sizes
    (``nonzero``, ``masked_select``, ``unique``), and building a tensor from host data (``torch.tensor``:
    ``lift_fresh``, a blocking host-to-device copy)."""

    FORBIDDEN = ("_local_scalar_dense", "lift_fresh", "nonzero", "masked_select", "unique", "is_nonzero", "equal")

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.__name__
        if any(bad in name for bad in self.FORBIDDEN):
            raise AssertionError(f"host sync: aten.{name}")
        return func(*args, **(kwargs or {}))


@contextmanager
def forbid_host_sync() -> Iterator[None]:
    """Within the context, any host read of a tensor value raises (Python-level and aten-level)."""

    def refuse(*args, **kwargs):
        raise AssertionError("host sync: a tensor value was read on the host")

    with pytest.MonkeyPatch.context() as patch:
        for name in ("item", "tolist", "numpy", "cpu", "__bool__", "__float__", "__int__", "__index__"):
            patch.setattr(torch.Tensor, name, refuse)
        with _ForbidHostSync():
            yield
