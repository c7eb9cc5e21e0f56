"""Test-session settings shared by every test.

Each test process runs torch on one thread: the suite is mostly small ops, where OpenMP
synchronisation across threads costs more than it gains, and the README's command runs one
process per core (``pytest -n auto``) instead.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)
