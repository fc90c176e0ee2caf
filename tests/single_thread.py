"""One intra-op thread while a test module runs (use as a module-scoped autouse fixture).

On this project's shared 2-core machine, two OpenMP threads competing with other
processes made a ViT training step 30x slower than one thread did.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch


def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
