"""Silence what Lightning says on every fit and predict, for one call or one command.

Lightning announces devices ("GPU available: ...") and product tips through one logger; the
frozen ViT is in eval mode on purpose; an empty val loader list is Darts' normal case; Lightning's
own pytree helper trips torch's deprecation of ``LeafSpec``; Darts' data loaders pin memory,
which torch declines with a warning on a machine without an accelerator. None of it is
anything a user can act on. Only ``logging`` and ``warnings``: the CLI enters this before
knowing whether its command needs Darts at all (``stream`` must not import it).
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator

LIGHTNING_INFO_LOGGER = "pytorch_lightning.utilities.rank_zero"
EXPECTED_WARNINGS = (
    r"Found \d+ module\(s\) in eval mode",
    r"Total length of `list` across ranks is zero",
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    r"'pin_memory' argument is set as true but no accelerator is found",
)


@contextlib.contextmanager
def quiet_lightning() -> Iterator[None]:
    """Drop Lightning's chatter and the expected warnings inside the block only; a logger level
    the user set is kept, and every other warning still shows."""
    info = logging.getLogger(LIGHTNING_INFO_LOGGER)
    previous = info.level
    if previous == logging.NOTSET:
        info.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            for message in EXPECTED_WARNINGS:
                warnings.filterwarnings("ignore", message=message)
            yield
    finally:
        info.setLevel(previous)
