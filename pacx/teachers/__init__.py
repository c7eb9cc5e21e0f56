"""pacx.teachers: the frozen teachers of Stage 2 as plug-ins, one module per modality.

Every module of this package whose name does not start with ``_`` is imported here, so a new
modality is one new file (see ``docs/adding_a_teacher.md``). Teachers living in other packages
register themselves through the ``pacx.teachers`` entry-point group.
"""

from __future__ import annotations

import importlib
import pkgutil
from importlib.metadata import entry_points

from .base import TRAINING_KEYS, TeacherPlugin, get_teacher, list_teachers, register_teacher

__all__ = ["TRAINING_KEYS", "TeacherPlugin", "get_teacher", "list_teachers", "register_teacher"]

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_") and _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")
for _entry in entry_points(group="pacx.teachers"):
    _entry.load()
