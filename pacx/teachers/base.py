"""The teacher plug-in: everything the pipeline needs to know about one teacher modality.

A teacher modality (ECG, labs, vitals, ...) is one :class:`TeacherPlugin` subclass registered
with :func:`register_teacher`. The pipeline never names a modality: every stage loops over
``cfg["distill"]["teachers"]`` and asks the registry for

* the network (:meth:`TeacherPlugin.build`) and how published weights load into it
  (:meth:`TeacherPlugin.load_weights`);
* the dataset that reads the modality from the cohort, preprocessed
  (:meth:`TeacherPlugin.dataset`);
* the frozen embedding module, whose ``embed_dim`` is the embedding size
  (:meth:`TeacherPlugin.frozen`);
* optionally, a Stage-1 objective for training the network from scratch on the cohort
  (:meth:`TeacherPlugin.loss` on :meth:`TeacherPlugin.training_dataset`).

Its configuration is the section ``cfg["teachers"][name]`` of the run configuration; the keys
every trainable teacher shares are in :data:`TRAINING_KEYS`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from torch import nn
from torch.utils.data import Dataset

from pacx.io import load_safetensors
from pacx.nets.teachers import Teacher

__all__ = ["TRAINING_KEYS", "TeacherPlugin", "get_teacher", "list_teachers", "register_teacher"]

# Section keys of a teacher trained from scratch (Stage 1b); ``checkpoint`` loads weights instead.
TRAINING_KEYS: tuple[str, ...] = ("epochs", "batch_size", "lr", "weight_decay", "warmup_fraction", "checkpoint")

_NAME_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_REGISTRY: dict[str, type[TeacherPlugin]] = {}
P = TypeVar("P", bound="type[TeacherPlugin]")


class TeacherPlugin:
    """One teacher modality. Subclass it in one file and register it with :func:`register_teacher`.

    Class attributes:
        name: the registry key, set by :func:`register_teacher`. It names the configuration
            section ``teachers.<name>``, the embedding cache ``teachers/<split>/<name>.npy``,
            the stage folder ``teacher_<name>/`` and the ``<name>_only`` ablation.
        modality: what the teacher reads, in words (for tables and ``--help``).
        cli_options: command-line flags the recipes add for this teacher,
            ``{"--flag": (section_key, help)}``; a given flag sets ``teachers.<name>.<section_key>``.

    Args:
        section: the teacher's configuration section.

    Example:
        >>> class MeanOfLabs(TeacherPlugin):
        ...     modality = "the mean lab percentile"
        ...     def build(self, root):
        ...         return nn.Identity()
        >>> MeanOfLabs({}).trains
        False
    """

    name: ClassVar[str] = ""
    modality: ClassVar[str] = ""
    cli_options: ClassVar[Mapping[str, tuple[str, str]]] = {}

    def __init__(self, section: Mapping[str, Any]) -> None:
        if not isinstance(section, Mapping):
            raise ValueError(f"teacher {self.name!r}: its configuration section must be a mapping, got {section!r}")
        self.section = dict(section)

    # -- network -------------------------------------------------------------------------------
    def build(self, root: Path) -> nn.Module:
        """The untrained network, sized for the cohort at ``root`` when that matters."""
        raise NotImplementedError(f"{type(self).__name__} must implement build(root)")

    def load_weights(self, net: nn.Module, path: str | Path) -> None:
        """Load published weights into ``net``, strictly. Default: a safetensors state dict.

        Raises:
            ValueError: when keys are missing or unexpected (both listed).
        """
        missing, unexpected = net.load_state_dict(load_safetensors(path), strict=False)
        if missing or unexpected:
            raise ValueError(f"{path}: does not match teacher {self.name!r}: missing keys {list(missing)[:10]}, "
                             f"unexpected keys {list(unexpected)[:10]}")

    def frozen(self, net: nn.Module) -> Teacher:
        """The frozen embedding module around a trained ``net`` (its ``embed_dim`` is the embedding size)."""
        raise NotImplementedError(f"{type(self).__name__} must implement frozen(net)")

    # -- data ----------------------------------------------------------------------------------
    def dataset(self, root: Path, split: str, cache_dir: Path) -> Dataset:
        """Row-aligned items of ``split`` holding the keys :meth:`frozen`'s teacher reads, preprocessed.

        Args:
            root: the cohort root (Symile-MIMIC layout).
            split: split name.
            cache_dir: a folder of this teacher's own for preprocessed copies of the data.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement dataset(root, split, cache_dir)")

    # -- optional Stage-1 training ---------------------------------------------------------------
    @property
    def trains(self) -> bool:
        """Whether this teacher can be trained from scratch (it overrides :meth:`loss`)."""
        return type(self).loss is not TeacherPlugin.loss

    def training_dataset(self, root: Path, split: str, cache_dir: Path) -> Dataset:
        """Items for Stage-1 training (default: :meth:`dataset`; add targets here when the loss needs them)."""
        return self.dataset(root, split, cache_dir)

    def loss(self, net: nn.Module, batch: Mapping[str, Any]) -> tuple[torch.Tensor, Mapping[str, Any]]:
        """Stage-1 objective ``(loss, logs)`` of one batch; a :class:`pacx.engine.Trainer` step function."""
        raise NotImplementedError(f"teacher {self.name!r} has no training step; set teachers.{self.name}.checkpoint")

    def describe(self, net: nn.Module) -> dict[str, Any]:
        """JSON-safe facts about a built network, stored in the stage's ``done.json``."""
        return {"parameters": sum(p.numel() for p in net.parameters())}


def register_teacher(name: str, overwrite: bool = False) -> Callable[[P], P]:
    """Class decorator adding a :class:`TeacherPlugin` subclass to the registry under ``name``.

    Args:
        name: a Python identifier (letter first; letters, digits, ``_``).
        overwrite: replace another class already registered under ``name``.

    Raises:
        ValueError: for an invalid name, a class that is not a TeacherPlugin, or a name taken by
            another class while ``overwrite`` is False.

    Example:
        >>> @register_teacher("doc_example")
        ... class DocTeacher(TeacherPlugin):
        ...     modality = "nothing"
        >>> "doc_example" in list_teachers()
        True
    """
    if not isinstance(name, str) or not _NAME_PATTERN.match(name):
        raise ValueError(f"register_teacher: name must be an identifier like 'spirometry', got {name!r}")

    def decorator(cls: P) -> P:
        if not (isinstance(cls, type) and issubclass(cls, TeacherPlugin)):
            raise ValueError(f"register_teacher({name!r}): expected a TeacherPlugin subclass, got {cls!r}")
        existing = _REGISTRY.get(name)
        same = existing is not None and (existing.__module__, existing.__qualname__) == (cls.__module__, cls.__qualname__)
        if existing is not None and not same and not overwrite:
            raise ValueError(f"register_teacher: {name!r} is already {existing.__module__}.{existing.__qualname__}; "
                             "pick another name or pass overwrite=True")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorator


def list_teachers() -> list[str]:
    """The registered teacher names, sorted."""
    return sorted(_REGISTRY)


def get_teacher(name: str, section: Mapping[str, Any] | None = None) -> TeacherPlugin:
    """The plug-in registered as ``name``, configured with ``section``.

    Raises:
        ValueError: when ``name`` is not registered (the registered names are listed).
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown teacher {name!r}; registered teachers: {list_teachers()} (a teacher is a "
                         "TeacherPlugin registered with pacx.teachers.register_teacher, see docs/adding_a_teacher.md)")
    return _REGISTRY[name]({} if section is None else section)
