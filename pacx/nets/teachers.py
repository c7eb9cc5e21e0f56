"""Frozen physiological teachers: modules that embed one modality of a batch dict.

A teacher turns one modality of a batch dict into a fixed embedding (B, D). Teachers run once,
before Stage 2, to fill the embedding cache (``<out>/teachers/<split>/<name>.npy``); Stage 2
only reads that cache. The pipeline finds teachers through the plug-in registry of
:mod:`pacx.teachers`, whose plug-ins build these modules (see ``docs/adding_a_teacher.md``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from .lab_dae import LabDAE
from .net1d import Net1D

__all__ = ["ECGTeacher", "LabTeacher", "Teacher", "compute_teacher_embeddings"]


class Teacher(nn.Module):
    """Base class of a frozen teacher: ``embed(batch) -> (B, embed_dim)`` without gradients.

    Subclasses set ``required_keys`` (the batch keys they read) and ``self.embed_dim`` and
    implement :meth:`_embed`, which receives only the required entries as tensors on the
    teacher's device.

    Frozen semantics: after :meth:`freeze` every parameter has ``requires_grad=False`` and the
    module stays in eval mode even when a parent calls ``.train()``, so BatchNorm running
    statistics never drift and dropout never fires. :meth:`embed` also runs under
    ``torch.no_grad()``, so no graph is built whatever a caller does to ``requires_grad``.

    Example:
        >>> class MeanTeacher(Teacher):
        ...     required_keys = ("labs",)
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.embed_dim = 1
        ...     def _embed(self, inputs):
        ...         return inputs["labs"].mean(dim=1, keepdim=True)
        >>> MeanTeacher().freeze().embed({"labs": torch.ones(3, 50)}).shape
        torch.Size([3, 1])
    """

    name: str = ""  # the plug-in name, for messages
    required_keys: tuple[str, ...] = ()

    def __init__(self) -> None:
        super().__init__()
        self.embed_dim: int = 0
        self._frozen = False

    @property
    def is_frozen(self) -> bool:
        """Whether :meth:`freeze` is in effect."""
        return self._frozen

    def freeze(self) -> Teacher:
        """Disable gradients for every parameter and pin the module (and its children) in eval mode."""
        for param in self.parameters():
            param.requires_grad_(False)
        self._frozen = True
        super().train(False)
        return self

    def unfreeze(self) -> Teacher:
        """Undo :meth:`freeze` (re-enable gradients; the mode is left as it is)."""
        for param in self.parameters():
            param.requires_grad_(True)
        self._frozen = False
        return self

    def train(self, mode: bool = True) -> Teacher:
        """As ``nn.Module.train``, except that a frozen teacher always stays in eval mode."""
        return super().train(False if self._frozen else mode)

    def _embed(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Compute (B, embed_dim) from the required batch entries (already tensors on the teacher's device)."""
        raise NotImplementedError(f"{type(self).__name__} must implement _embed(inputs)")

    def _device(self) -> torch.device:
        for tensor in self.parameters():
            return tensor.device
        for tensor in self.buffers():
            return tensor.device
        return torch.device("cpu")

    def _float_dtype(self) -> torch.dtype | None:
        for tensor in self.parameters():
            if tensor.is_floating_point():
                return tensor.dtype
        return None

    def embed(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """Embed a batch dict without gradients.

        Args:
            batch: a dict holding at least ``required_keys`` (tensors or arrays, batch first).
                Floating entries are cast to the teacher's parameter dtype and moved to its device.

        Returns:
            A float tensor (B, embed_dim) on the teacher's device.

        Raises:
            ValueError: when ``batch`` is not a mapping, lacks a required key, holds something that
                is not a tensor or array there, or the subclass returns a wrongly shaped embedding.
        """
        if not isinstance(batch, Mapping):
            raise ValueError(f"{type(self).__name__}.embed: batch must be a dict, got {type(batch).__name__}")
        missing = [key for key in self.required_keys if key not in batch]
        if missing:
            raise ValueError(
                f"{type(self).__name__}.embed: batch lacks required key(s) {missing}; "
                f"required {list(self.required_keys)}, got {sorted(map(str, batch.keys()))}"
            )
        device, dtype = self._device(), self._float_dtype()
        inputs: dict[str, torch.Tensor] = {}
        for key in self.required_keys:
            try:
                tensor = torch.as_tensor(batch[key])
            except (TypeError, ValueError, RuntimeError) as err:
                raise ValueError(
                    f"{type(self).__name__}.embed: batch[{key!r}] must be a tensor or array, got "
                    f"{type(batch[key]).__name__} ({err})"
                ) from err
            # Floating inputs follow the teacher's precision (e.g. float64 numpy arrays from a dataset).
            if tensor.is_floating_point() and dtype is not None:
                tensor = tensor.to(dtype)
            inputs[key] = tensor.to(device)
        with torch.no_grad():
            out = self._embed(inputs)
        batch_size = next(iter(inputs.values())).shape[0] if inputs else out.shape[0]
        if not isinstance(out, torch.Tensor) or out.shape != (batch_size, self.embed_dim):
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(
                f"{type(self).__name__}._embed must return shape ({batch_size}, {self.embed_dim}), got {shape}"
            )
        return out

    def forward(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """Same as :meth:`embed`."""
        return self.embed(batch)


class ECGTeacher(Teacher):
    """Frozen Net1D (ECGFounder) teacher: ``embed = net.forward_features(batch["ecg"])``, (B, 1024) for ECGFounder.

    The batch's ``ecg`` must already be in ECGFounder's input convention, which the data pipeline
    produces: (B, 12, 5000) at 500 Hz in lead order I, II, III, aVR, aVL, aVF, V1-V6, each lead
    notch-filtered at 50 Hz (Q 30), band-passed 0.67-40 Hz (Butterworth order 4, zero phase) and
    baseline-corrected (201-sample median), then z-scored with ONE mean and std over the whole
    12 x 5000 array (``pacx.data.ecg.preprocess_ecg``; ``pacx.data.ecg.mimic_to_ecgfounder``
    reorders MIMIC/Symile leads). The teacher itself does no preprocessing.

    Args:
        net: the network, e.g. ``ecgfounder_12lead(n_classes=0)`` with loaded weights.
        frozen: freeze on construction (the default; teachers are never trained in Stage 2).

    Example:
        >>> from pacx.nets import net1d_small
        >>> teacher = ECGTeacher(net1d_small(n_classes=0))
        >>> teacher.embed({"ecg": torch.randn(2, 12, 1000)}).shape
        torch.Size([2, 128])
    """

    required_keys = ("ecg",)

    def __init__(self, net: Net1D, frozen: bool = True) -> None:
        super().__init__()
        if not isinstance(net, Net1D):
            raise ValueError(f"ECGTeacher: net must be a Net1D, got {type(net).__name__}")
        self.net = net
        self.embed_dim = net.num_features
        if frozen:
            self.freeze()

    def _embed(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.net.forward_features(inputs["ecg"])


class LabTeacher(Teacher):
    """Frozen lab DAE teacher: ``embed = dae.encode(batch["labs"], batch["labs_observed"])``, (B, 256).

    Missing positions are zeroed exactly as in DAE training, whatever placeholder the batch
    holds there.

    Args:
        dae: a trained :class:`LabDAE`.
        frozen: freeze on construction (the default).
        value_key: batch key of the (B, L) values in [0, 1].
        observed_key: batch key of the (B, L) observed mask (1 = observed).

    Example:
        >>> teacher = LabTeacher(LabDAE())
        >>> teacher.embed({"labs": torch.rand(2, 50), "labs_observed": torch.ones(2, 50)}).shape
        torch.Size([2, 256])
    """

    required_keys = ("labs", "labs_observed")

    def __init__(self, dae: LabDAE, frozen: bool = True, value_key: str = "labs",
                 observed_key: str = "labs_observed") -> None:
        super().__init__()
        if not isinstance(dae, LabDAE):
            raise ValueError(f"LabTeacher: dae must be a LabDAE, got {type(dae).__name__}")
        self.dae = dae
        self.embed_dim = dae.latent_dim
        # Any mask-aware tabular modality (labs, vitals) reads its own pair of batch keys.
        self.required_keys = (value_key, observed_key)
        if frozen:
            self.freeze()

    def _embed(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        values, observed = (inputs[k] for k in self.required_keys)
        return self.dae.encode(values, observed)


def compute_teacher_embeddings(
    teacher: Teacher,
    loader: Iterable[Mapping[str, Any]],
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> np.ndarray:
    """Embed every batch of ``loader`` in order and stack the results: (N, embed_dim) float32.

    The teacher is moved to ``device`` and run in eval mode (its previous mode is restored
    afterwards when it is not frozen). Rows follow the loader's order, so the loader must not
    shuffle: the cache must stay row-aligned with ``data_npy/<split>``.

    Args:
        teacher: the teacher.
        loader: an iterable of batch dicts, typically a ``DataLoader(shuffle=False)``.
        device: where to run.
        progress: show a tqdm bar.

    Returns:
        A float32 array (N, embed_dim); (0, embed_dim) for an empty loader.

    Raises:
        ValueError: when ``teacher`` is not a Teacher, the loader shuffles, a batch is not a
            dict, or an embedding is not finite.

    Example:
        >>> batches = [{"labs": torch.rand(4, 50), "labs_observed": torch.ones(4, 50)}] * 2
        >>> compute_teacher_embeddings(LabTeacher(LabDAE()), batches).shape
        (8, 256)
    """
    if not isinstance(teacher, Teacher):
        raise ValueError(f"compute_teacher_embeddings: teacher must be a Teacher, got {type(teacher).__name__}")
    if isinstance(loader, torch.utils.data.DataLoader) and isinstance(loader.sampler, torch.utils.data.RandomSampler):
        raise ValueError(
            "compute_teacher_embeddings: loader shuffles (RandomSampler); use shuffle=False so rows stay "
            "aligned with the dataset order"
        )
    was_training = teacher.training
    teacher.to(device)
    teacher.eval()
    chunks: list[np.ndarray] = []
    iterator: Iterable[Mapping[str, Any]] = loader
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(loader, desc=f"teacher {teacher.name or type(teacher).__name__}")
    try:
        for index, batch in enumerate(iterator):
            if not isinstance(batch, Mapping):
                raise ValueError(
                    f"compute_teacher_embeddings: batch {index} must be a dict, got {type(batch).__name__}"
                )
            out = teacher.embed(batch).float().cpu().numpy()
            if not np.isfinite(out).all():
                raise ValueError(f"compute_teacher_embeddings: batch {index} produced non-finite embeddings")
            chunks.append(out)
    finally:
        teacher.train(was_training)
    if not chunks:
        return np.zeros((0, teacher.embed_dim), dtype=np.float32)
    return np.concatenate(chunks, axis=0).astype(np.float32, copy=False)
