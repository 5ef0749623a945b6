"""One strict reader for the timestamps the runtime is given: :func:`read_timestamps`.

Every timestamp that reaches :class:`~timesclip_export.runtime.forecaster.RollingForecaster`,
:class:`~timesclip_export.service.stream_pool.StreamPool` or the ``stream`` command is read here,
into int64: nanoseconds since 1970-01-01 for datetime bundles, integer steps for range-index
bundles. Anything else is refused with a :class:`~timesclip_export.errors.TimestampError` naming
the first bad row (``row``) and a ``reason``; nothing is guessed, read from the clock, wrapped
around or converted silently, and no other exception type escapes for bad input.

Datetime bundles (the manifest's ``time.index`` is ``"datetime"``, or absent):

- accepted: ISO 8601 strings ``YYYY-MM-DD``, ``YYYY-MM-DDTHH:MM``, ``YYYY-MM-DDTHH:MM:SS`` and
  ``YYYY-MM-DDTHH:MM:SS.f`` with 1 to 9 fraction digits, ``T`` or one space between date and
  time, nothing around them; numpy ``datetime64`` values and arrays of any unit (converted to
  nanoseconds with an overflow check; units finer than ns are truncated to ns); pandas
  ``DatetimeIndex``, ``Series`` and ``Timestamp`` and Python ``datetime`` (and ``date``,
  as midnight) without a time zone. One value or a list, tuple, array or pandas object of them.
- refused, reason ``"timestamps"``: NaT, ``None`` and NaN; empty strings; any other string
  (``"now"``, ``"today"``, ``"NaT"``, other date formats); invalid dates and times
  (``2017-02-30``, ``25:00``, a leap second ``:60``); numbers and bools; timestamps outside what
  int64 nanoseconds hold, 1677-09-21T00:12:43.145224193 to 2262-04-11T23:47:16.854775807.
- refused, reason ``"timezone"``: a string ending in ``Z`` or an offset (``+05:00``,
  ``-0300``, ``+05``), a tz-aware pandas index, Series or Timestamp, an aware ``datetime``. A
  bundle's time index has no time zone: Darts 0.48.1 drops it when a ``TimeSeries`` is built
  (``TimeSeries.__init__`` calls ``times.tz_localize(None)`` on a tz-aware ``DatetimeIndex``
  and logs a warning), which keeps the wall-clock times, so the model was trained on local
  wall-clock times. Converting an offset to UTC (what numpy and pandas would do) would shift
  every row by the offset, so the runtime asks for the series' own wall-clock times instead
  (for pandas: ``.tz_localize(None)``).

Range-index bundles (``time.index`` is ``"range"``): Python ints or numpy integers (scalars,
lists, tuples, ``range``, integer arrays, pandas integer indexes) within ±(2**53 - 1), the
integers JSON and float64 hold exactly, and far from int64 overflow once the horizon is added.
Bools, floats (even integral ones), strings and missing values are refused, reason
``"timestamps"``.

Speed: a server reads one or a few timestamps per stream and call, thousands of times per
second, so a list or array of strings takes one precompiled regex match per string and one numpy
parse of them all (numpy picks the finest unit they need; the range is checked in that unit
before converting to ns); ``datetime64`` arrays are checked vectorised. Only when something is
wrong, or for lists of mixed objects, are elements looked at one by one.
"""

from __future__ import annotations

import datetime
import math
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
from timesclip_export.errors import TimestampError

_NAT = np.iinfo(np.int64).min
_NS_MAX = 2**63 - 1  # 2262-04-11T23:47:16.854775807; -_NS_MAX is 1677-09-21T00:12:43.145224193
_STEP_MAX = 2**53 - 1
_TIME_RANGE = "1677-09-21T00:12:43.145224193 to 2262-04-11T23:47:16.854775807"
_OUT_OF_RANGE = f"is outside the times int64 nanoseconds hold, {_TIME_RANGE}"
_ISO_FORMS = "YYYY-MM-DD, YYYY-MM-DDTHH:MM, YYYY-MM-DDTHH:MM:SS[.fffffffff] ('T' or a space)"
_NO_OFFSET = (
    "the bundle's time index has no time zone: send the series' own wall-clock times without "
    "an offset (for pandas: .tz_localize(None))"
)

_ISO = re.compile(r"\d{4}-\d\d-\d\d(?:[T ]\d\d:\d\d(?::\d\d(?:\.\d{1,9})?)?)?", re.ASCII)
_ISO_WITH_OFFSET = re.compile(_ISO.pattern + r" ?(?:Z|[+-]\d\d(?::?\d\d)?)", re.ASCII)
_NS_PER_UNIT = {
    "W": 7 * 86_400 * 10**9,
    "D": 86_400 * 10**9,
    "h": 3_600 * 10**9,
    "m": 60 * 10**9,
    "s": 10**9,
    "ms": 10**6,
    "us": 10**3,
    "ns": 1,
}
_NS = np.dtype("datetime64[ns]")
# The unit an ISO string needs, by its length (the pattern fixes the rest).
_UNIT_OF_LENGTH = {
    length: np.dtype(f"datetime64[{unit}]")
    for length, unit in [(10, "D"), (16, "m"), (19, "s")]
    + [(20 + digits, ("ms", "us", "ns")[(digits - 1) // 3]) for digits in range(1, 10)]
}
_LIMITS = {unit: _NS_MAX // ns for unit, ns in _NS_PER_UNIT.items()}  # in the unit, either sign
_WILD_YEARS_MONTHS = 10**6  # |value| of a Y or M datetime64 beyond which it is surely out of range


def read_timestamps(values: Any, index: str | None) -> np.ndarray:
    """``values`` as a 1-D int64 array: ns since the epoch, or integer steps when ``index`` is
    ``"range"`` (the manifest's ``time.index``); :class:`TimestampError` for anything the
    module's rules refuse, with ``row`` the first bad one."""
    if index == "range":
        return _read_steps(values)
    return _read_datetimes(values)


# ------------------------------------------------------------------------ datetime bundles
def _read_datetimes(values: Any) -> np.ndarray:
    if isinstance(values, str):
        values = [values]
    elif _is_pandas(values):
        tz = getattr(getattr(values, "dtype", None), "tz", None)
        if tz is not None:
            first = next(iter(values), "")
            raise _refusal(0, first, f"is in time zone {tz}; {_NO_OFFSET}", "timezone")
        values = values.to_numpy()
    if isinstance(values, np.ndarray):
        values = _one_dimensional(values)
        kind = values.dtype.kind
        if kind == "M":
            return _datetime64_ns(values)
        if kind in ("U", "O"):
            values = values.tolist()
        elif not len(values):
            return np.empty(0, np.int64)
        else:
            raise _refusal(0, values[0], _not_a_time(values[0]))
    elif not isinstance(values, list | tuple):
        values = [values]
    try:
        iso = all(map(_ISO.fullmatch, values))  # the fast path: strings, all well formed
    except TypeError:  # not all strings
        iso = False
    return _parse_iso(values) if iso else _read_elements(values)


def _parse_iso(strings: Sequence[str], first_row: int = 0) -> np.ndarray:
    """Strings that match the ISO pattern, parsed by numpy in the finest unit they need (told
    by the longest: numpy finds it itself several times slower)."""
    if not strings:
        return np.empty(0, np.int64)
    unit = _UNIT_OF_LENGTH[max(map(len, strings))]
    try:
        parsed = np.asarray(strings, dtype=unit)
    except ValueError as whole:  # an invalid date or time: find which, with numpy's own words
        for row, text in enumerate(strings):
            try:
                np.datetime64(text)
            except ValueError as err:
                raise _refusal(first_row + row, text, f"is not a valid time ({err})") from None
        raise TimestampError(f"cannot read the timestamps ({whole})") from whole
    if unit == _NS:  # numpy's ns parse wraps around silently beyond int64
        ns = parsed.view(np.int64)
        micro = np.asarray(strings, dtype="datetime64[us]").view(np.int64)
        wrapped = (ns // 1000 != micro) | (ns == _NAT)
        if wrapped.any():
            row = int(np.argmax(wrapped))
            raise _refusal(first_row + row, strings[row], _OUT_OF_RANGE)
    return _datetime64_ns(parsed, strings, first_row)


def _read_elements(values: Sequence[Any]) -> np.ndarray:
    """Mixed or suspect elements, one at a time: the first bad one is refused by row."""
    out = np.empty(len(values), np.int64)
    for row, value in enumerate(values):
        if isinstance(value, str):
            if _ISO.fullmatch(value) is None:
                raise _string_refusal(row, value)
            out[row] = _parse_iso([value], row)[0]
        else:
            out[row] = _datetime64_ns(np.array([_as_datetime64(value, row)]), first_row=row)[0]
    return out


def _as_datetime64(value: Any, row: int) -> np.datetime64:
    """One non-string element as a ``datetime64`` (any unit), or a refusal."""
    if _is_missing(value):
        raise _refusal(row, value, "is missing (NaT, None or NaN); every row needs its time")
    if isinstance(value, datetime.datetime):
        if value.tzinfo is not None:
            raise _refusal(
                row, value, f"has a time zone ({value.tzinfo}); {_NO_OFFSET}", "timezone"
            )
        to_datetime64 = getattr(value, "to_datetime64", None)  # a pandas Timestamp: keep its ns
        return to_datetime64() if to_datetime64 else np.datetime64(value, "us")
    if isinstance(value, datetime.date):
        return np.datetime64(value, "D")
    if isinstance(value, np.datetime64):
        return value
    raise _refusal(row, value, _not_a_time(value))


def _datetime64_ns(
    array: np.ndarray, quote: Sequence[Any] | None = None, first_row: int = 0
) -> np.ndarray:
    """A 1-D ``datetime64`` array of any unit as int64 ns, refusing NaT and values beyond
    int64 nanoseconds (checked in the array's own unit, before converting)."""
    original, wild = array, None
    unit, count = np.datetime_data(array.dtype)
    limit = _LIMITS.get(unit) if count == 1 else None
    if limit is None:  # a rarer unit
        array, wild, limit = _to_common_unit(array)
    ints = array.view(np.int64)
    if wild is None or not wild.any():  # NaT, int64's minimum, is below -limit in every unit
        if len(ints) == 1:  # the serving case: plain Python is faster than numpy here
            ok = -limit <= ints.tolist()[0] <= limit
        else:
            ok = not len(ints) or (ints.min() >= -limit and ints.max() <= limit)
        if ok:
            return ints.copy() if limit == _NS_MAX else array.astype(_NS).view(np.int64)
    bad = (ints < -limit) | (ints > limit)
    if wild is not None:
        bad |= wild
    row = int(np.argmax(bad))
    missing = quote is None and ints[row] == _NAT and (wild is None or not wild[row])
    detail = "is missing (NaT); every row needs its time" if missing else _OUT_OF_RANGE
    shown = quote[row] if quote is not None else original[row]
    raise _refusal(first_row + row, shown, detail)


def _to_common_unit(array: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, int]:
    """A ``datetime64`` array of a rarer unit (years, months, finer than ns, a multiple such as
    ``10s``, generic) in one whose range can be checked: the array, a mask of values surely out
    of range (years and months, set to 0 so converting them cannot overflow) and the bound."""
    unit, count = np.datetime_data(array.dtype)
    if unit in ("Y", "M"):  # no fixed length in ns: via days, after a loose bound
        ints = array.view(np.int64)
        wild = (ints != _NAT) & ((ints > _WILD_YEARS_MONTHS) | (ints < -_WILD_YEARS_MONTHS))
        days = np.where(wild, 0, ints).view(array.dtype).astype("datetime64[D]")
        return days, wild, _LIMITS["D"]
    if unit in ("ps", "fs", "as"):  # every value fits in ns; converting truncates
        return array.astype(_NS), None, _NS_MAX
    return array, None, _NS_MAX // (_NS_PER_UNIT.get(unit, 1) * count)  # generic: only NaT


def _string_refusal(row: int, text: str) -> TimestampError:
    """Why a string that does not match the ISO pattern is refused."""
    if _ISO_WITH_OFFSET.fullmatch(text.strip()):
        return _refusal(row, text, f"has a time zone offset; {_NO_OFFSET}", "timezone")
    if not text.strip():
        return _refusal(row, text, "is empty; every row needs its time")
    return _refusal(row, text, f"is not an ISO 8601 time ({_ISO_FORMS})")


# ------------------------------------------------------------------------ range bundles
def _read_steps(values: Any) -> np.ndarray:
    if isinstance(values, range):
        return _read_range(values)
    if _is_pandas(values):
        values = values.to_numpy()
    if isinstance(values, np.ndarray):
        values = _one_dimensional(values)
        kind = values.dtype.kind
        if kind in "iu":
            bad = values > _STEP_MAX
            if kind == "i":
                bad |= values < -_STEP_MAX
            if bad.any():
                row = int(np.argmax(bad))
                raise _step_refusal(row, int(values[row]))
            return values.astype(np.int64)
        if kind != "O":
            if not len(values):
                return np.empty(0, np.int64)
            raise _step_refusal(0, values[0])
        values = values.tolist()
    elif not isinstance(values, list | tuple):
        values = [values]
    out = np.empty(len(values), np.int64)
    for row, value in enumerate(values):
        if isinstance(value, bool | np.bool_) or not isinstance(value, int | np.integer):
            raise _step_refusal(row, value)
        if not -_STEP_MAX <= int(value) <= _STEP_MAX:
            raise _step_refusal(row, int(value))
        out[row] = value
    return out


def _read_range(steps: range) -> np.ndarray:
    """A Python ``range`` without listing it: its ends bound it, a bisection finds the first
    step out of bounds."""
    if not len(steps):
        return np.empty(0, np.int64)

    def out_of_bounds(i: int) -> bool:
        return abs(steps[i]) > _STEP_MAX

    if out_of_bounds(0):
        raise _step_refusal(0, steps[0])
    if out_of_bounds(len(steps) - 1):
        low, high = 0, len(steps) - 1  # low in bounds, high out: steps are monotonic
        while high - low > 1:
            middle = (low + high) // 2
            low, high = (low, middle) if out_of_bounds(middle) else (middle, high)
        raise _step_refusal(high, steps[high])
    return np.arange(steps.start, steps.stop, steps.step, dtype=np.int64)


def _step_refusal(row: int, value: Any) -> TimestampError:
    if isinstance(value, int) and not isinstance(value, bool):
        detail = (
            f"is outside ±(2**53 - 1) = ±{_STEP_MAX}, the integers JSON and float64 hold exactly"
        )
    else:
        detail = (
            f"is {_kind(value)}, not an integer step; the bundle's time index is a range "
            "index: send Python or numpy integers"
        )
    return _refusal(row, value, detail)


# ------------------------------------------------------------------------ shared
def _refusal(row: int, value: Any, detail: str, reason: str = "timestamps") -> TimestampError:
    """``timestamp '...' at row N <detail>``, quoting at most ~40 characters of the value."""
    text = value if isinstance(value, str) else _show(value)
    if len(text) > 40:
        text = text[:37] + "..."
    return TimestampError(f"timestamp {text!r} at row {row} {detail}", row=row, reason=reason)


def _show(value: Any) -> str:
    if isinstance(value, np.generic) and not isinstance(value, np.datetime64):
        value = value.item()
    if isinstance(value, np.datetime64 | datetime.date) or _is_missing(value):
        return str(value)
    return repr(value)


def _not_a_time(value: Any) -> str:
    return f"is {_kind(value)}, not a time; send ISO 8601 strings ({_ISO_FORMS}) or datetime values"


def _kind(value: Any) -> str:
    if isinstance(value, bool | np.bool_):
        return "a bool"
    if isinstance(value, int | np.integer):
        return "an integer"
    if isinstance(value, float | np.floating):
        return "a float"
    if isinstance(value, complex | np.number):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if _is_missing(value):
        return "missing"
    return f"a {type(value).__name__}"


def _is_missing(value: Any) -> bool:
    """None, NaN, NaT (numpy's or pandas')."""
    if value is None or type(value).__name__ in ("NaTType", "NAType"):
        return True
    if isinstance(value, float | np.floating):
        return math.isnan(value)
    return isinstance(value, np.datetime64) and bool(np.isnat(value))


def _is_pandas(values: Any) -> bool:
    """A pandas Index, Series or array (without importing pandas)."""
    return (
        type(values).__module__.startswith("pandas")
        and hasattr(values, "to_numpy")
        and getattr(values, "ndim", 0) >= 1  # not a Timestamp
    )


def _one_dimensional(array: np.ndarray) -> np.ndarray:
    if array.ndim == 0:
        return array.reshape(1)
    if array.ndim != 1:
        raise TimestampError(
            f"timestamps must be one-dimensional (one per row), got shape {array.shape}"
        )
    return array
