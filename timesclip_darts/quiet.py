"""Silence what Lightning says on every fit and predict, for one call or one command.

Lightning announces devices ("GPU available: ...") and product tips through one logger; the
frozen ViT is in eval mode on purpose; an empty val loader list is Darts' normal case; Lightning's
own pytree helper trips torch's deprecation of ``LeafSpec``; Darts' data loaders pin memory,
which torch declines with a warning on a machine without an accelerator; on ``to_onnx`` the
ONNX exporters note what they skip. None of it is anything a user can act on. Only ``logging``
and ``warnings``: the CLI enters this before knowing whether its command needs Darts at all
(``stream`` must not import it).
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
# Their warnings are about the exporters (operators of packages not installed, constants not
# folded), not about the graph written; torch.export's about Darts' RINorm, which keeps its
# statistics as plain attributes (the graph computes them from each window all the same).
ONNX_EXPORT_LOGGERS = ("torch.onnx", "onnxscript")
ONNX_EXPORT_WARNINGS = (r"The tensor attributes .* were assigned during export",)


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


@contextlib.contextmanager
def quiet_onnx_export() -> Iterator[None]:
    """Hold the ONNX exporters' loggers at ERROR and drop the expected export warnings inside
    the block only (errors still show); a logger level the user set is kept."""
    loggers = [logging.getLogger(name) for name in ONNX_EXPORT_LOGGERS]
    previous = [logger.level for logger in loggers]
    for logger, level in zip(loggers, previous, strict=True):
        if level == logging.NOTSET:
            logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            for message in ONNX_EXPORT_WARNINGS:
                warnings.filterwarnings("ignore", message=message)
            yield
    finally:
        for logger, level in zip(loggers, previous, strict=True):
            logger.setLevel(level)
