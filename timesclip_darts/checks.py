"""Input checks shared by the core model, the Darts/CLI data path and the deployment runtime.

numpy only (no torch, Darts or pandas), so the runtime imports it as it is. Each caller finds
problems its own fast way where it must (the core on the device), then names them here: one
rule, one limit and one wording for the same problem wherever it is met.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Largest input magnitude: beyond about 1.8e19 the float32 variance of a window overflows and the
# forecast silently becomes inf/NaN. 1e18 leaves room for the de-normalised forecast too.
MAX_ABS_VALUE = 1e18


@dataclass(frozen=True)
class BadValue:
    """The first value a model cannot take, with its place (``index``: one entry per axis)."""

    index: tuple[int, ...]
    value: float
    finite: bool  # False: NaN or inf; True: finite but beyond the limit

    def problem(self, limit: float = MAX_ABS_VALUE) -> str:
        """What is wrong with it, in words (no place: callers name the place their way)."""
        if not self.finite:
            return f"value {self.value} is not finite (NaN or inf)"
        return (
            f"value {self.value:.3g} is beyond ±{limit:.0e} and would overflow float32 window "
            "statistics; rescale the series"
        )


def first_bad_value(values: np.ndarray, limit: float = MAX_ABS_VALUE) -> BadValue | None:
    """The first non-finite value of ``values`` (in C order), else the first beyond ``±limit``;
    ``None`` when all are fine."""
    values = np.asarray(values)
    finite = np.isfinite(values)
    if not finite.all():
        index = tuple(int(i) for i in np.argwhere(~finite)[0])
        return BadValue(index, float(values[index]), finite=False)
    huge = np.abs(values) > limit
    if huge.any():
        index = tuple(int(i) for i in np.argwhere(huge)[0])
        return BadValue(index, float(values[index]), finite=True)
    return None


def bad_rows(values: np.ndarray) -> np.ndarray:
    """Rows of a ``[rows, columns]`` array holding a NaN or inf value."""
    return np.flatnonzero(~np.isfinite(np.asarray(values)).all(axis=1))


@dataclass(frozen=True)
class TimestampProblem:
    """A break in a run of timestamps (int64 ns or integer steps) at position ``index``."""

    index: int  # the offending timestamp's position in the run checked
    kind: str  # "duplicate", "out-of-order" or "gap"
    missing_steps: int | None  # for a gap of whole steps; None for an irregular one


def timestamp_problem(times: np.ndarray, step: int | None) -> TimestampProblem | None:
    """The first duplicate, out-of-order or (with a fixed ``step``) irregular timestamp in
    ``times``; ``None`` when the run is strictly increasing by ``step``."""
    times = np.asarray(times, dtype=np.int64)
    if len(times) < 2:
        return None
    diffs = np.diff(times)
    for bad, kind in ((diffs == 0, "duplicate"), (diffs < 0, "out-of-order")):
        if bad.any():
            return TimestampProblem(int(np.argmax(bad)) + 1, kind, None)
    if step:
        wrong = diffs != step
        if wrong.any():
            i = int(np.argmax(wrong))
            whole = diffs[i] % step == 0
            return TimestampProblem(i + 1, "gap", int(diffs[i] // step - 1) if whole else None)
    return None
