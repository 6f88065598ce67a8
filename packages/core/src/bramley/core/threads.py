"""Torch CPU threads for a block of work, restored afterwards: the one thread policy every command and data path uses.

Commands take ``--threads`` (:func:`bramley.core.cli.add_threads_argument`) and run their work under
:func:`torch_threads`; code below the CLI (data transforms) uses it directly, so it lives outside the CLI module.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

__all__ = ["torch_threads"]


@contextlib.contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """Run the block with ``count`` torch CPU threads (``None``: as they are) and restore the previous count after
    it, also on an error: commands are called in-process too (tests, ``bramley``), and must leave torch as found.

    Cheap when nothing changes (no ``set_num_threads`` call), so it may wrap small hot operations too.
    """
    import torch

    previous = torch.get_num_threads()
    if count is not None and count != previous:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        if torch.get_num_threads() != previous:
            torch.set_num_threads(previous)
