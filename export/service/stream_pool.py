"""Keyed multi-stream state: one forecaster, many live streams (e.g. 10,000 transformer sensors,
a row every 15 minutes each), a forecast for every stream after every new row.

A :class:`StreamPool` keeps, per stream, what :meth:`RollingForecaster.update` keeps for its one
stream: the last ``input_chunk_length - 1`` raw rows (float32), the last timestamp and whether the
stream is timed, plus its *position*: the rows it has accepted. A caller that sends the position it
believes (``"from"``) learns of any rows the pool does not have (lost in a restart from an older
snapshot, or with an evicted stream) instead of getting a window with a hole. Each
:meth:`StreamPool.update` checks every stream's rows with the forecaster's own checks, refuses a
stream with any bad row whole (its state unchanged, the others go on), and runs the windows
completed by all accepted streams as a few large batches: one device call per ``batch_size``
windows. Since the runtime's forecasts do not depend on the batch a window is in (the engines'
``_run_batch``), they equal those of one :class:`RollingForecaster` per stream exactly (on CPU; on
CUDA, to float tolerance).

State lives in one preallocated float32 slab ``[capacity, input_chunk_length - 1, variates]`` (a
stream's rows right-aligned in its slot, fewer while its first window fills) plus a few numbers per
slot, and an insertion-ordered map from stream id to slot that doubles as the least-recently-
updated order for eviction (``max_streams``). The slab grows by doubling, up to ``max_streams``:
memory is about ``streams x (input_chunk_length - 1) x variates x 4`` bytes (10,000 ETT streams at
input length 96: 27 MB).

:meth:`StreamPool.snapshot` writes the state atomically (a temporary file in the same folder,
fsync, rename) as an ``.npz`` of plain arrays with a JSON header (no pickle);
:meth:`StreamPool.restore` reads it back, so a restarted process continues every stream at once.
The state is raw rows, which do not depend on the model's weights: a snapshot is bound to what the
rows mean (:func:`state_layout`: the inputs, the input length and the time index), so a retrained
bundle keeps every stream warm. :func:`open_pool` restores a snapshot or, when it cannot be read,
sets it aside and starts empty.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
import zipfile
from collections import Counter, OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from timesclip_export.errors import InputError, SnapshotError, TimestampError
from timesclip_export.runtime.forecaster import RollingForecaster

from timesclip_darts.atomic_files import atomic_path

SNAPSHOT_FORMAT = "timesclip-stream-pool"
SNAPSHOT_FORMAT_VERSION = 2  # 2: bound to state_layout() instead of the manifest's sha256
_READABLE_VERSIONS = (1, 2)  # 1: read only with the very bundle that wrote it
_ENTRY_KEYS = {"values", "timestamps", "from"}
_INITIAL_CAPACITY = 64
logger = logging.getLogger("timesclip_export.service.stream_pool")


@dataclass(frozen=True)
class StreamForecast:
    """One forecast of one stream, after the row that completed its window.

    ``time`` and ``horizon`` are ISO 8601 strings (``"2017-10-20T00:00:00"``) for datetime
    bundles, integers for range-index bundles, ``None`` for a stream sent without timestamps
    (``horizon`` also when the bundle's frequency is unknown). ``values`` is the point forecast
    ``[output_chunk_length, n_targets]`` in the original units; ``parameters`` the likelihood's
    ``[output_chunk_length, n_targets, n_parameters]`` when asked for."""

    stream: str
    time: str | int | None
    horizon: list[str | int] | None
    values: np.ndarray
    parameters: np.ndarray | None


@dataclass(frozen=True)
class StreamRejection:
    """A stream whose rows were refused for this call (its state is unchanged).

    ``reason`` is a short machine key for a problem of the input (``"nan"``, ``"too_large"``,
    ``"gap"``, ``"duplicate"``, ``"out_of_order"``, ``"columns"``, ``"shape"``, ``"dtype"``,
    ``"timestamps"``, ``"timezone"``, ``"format"``, ``"stream"``), ``"position"`` when the
    rows' ``"from"`` is not the stream's position (:attr:`position` is the pool's), ``"busy"``
    while another update of the stream is pending (:meth:`StreamPool.begin`), or
    ``"internal"`` when the runtime failed on this stream's windows (logged; the other streams
    of the call go on);
    ``message`` one line naming the stream and the problem; ``row`` the offending row of the
    stream's rows (of the whole input for :meth:`StreamPool.update_columnar`); ``position`` the
    rows the pool holds of the stream (0 for one it does not hold), set for ``"position"``."""

    stream: str
    reason: str
    message: str
    row: int | None
    position: int | None = None


@dataclass
class PoolUpdate:
    """What one :meth:`StreamPool.update` did: forecasts (in input order per stream, streams in
    input order), the streams it refused, and each accepted stream's position after it (the
    rows it has accepted: the ``"from"`` of its next rows)."""

    forecasts: list[StreamForecast] = field(default_factory=list)
    rejected: list[StreamRejection] = field(default_factory=list)
    positions: dict[str, int] = field(default_factory=dict)


@dataclass
class PendingUpdate:
    """An update begun by :meth:`StreamPool.begin`: its streams' rows checked and the streams
    reserved, its windows forecast step by step (:meth:`StreamPool.advance`), no state changed
    until :meth:`StreamPool.finish` (or none ever, after :meth:`StreamPool.abandon`)."""

    parameters: bool
    accepted: list[_Accepted]
    rejected: list[StreamRejection]
    forecasts: np.ndarray  # [windows, H, N_t, P], filled by advance()
    ends: np.ndarray  # window offsets: stream k's windows are ends[k]:ends[k + 1]
    done: int = 0
    failed: dict[str, str] = field(default_factory=dict)  # stream -> what failed
    closed: bool = False

    @property
    def windows(self) -> int:
        """Windows this update forecasts in all."""
        return len(self.forecasts)

    @property
    def forecast_done(self) -> bool:
        return self.done >= len(self.forecasts)


@dataclass
class _Accepted:
    """A stream's checked rows, waiting for the forecasts before its state changes."""

    stream: str
    slot: int | None
    combined: np.ndarray  # its kept rows, then the new ones
    n_new: int
    times: np.ndarray | None
    n_windows: int


class StreamPool:
    """Many keyed streams through one :class:`RollingForecaster`, batched across streams.

    Args:
        forecaster: the model; the pool uses its checks and its batched forward pass, not its own
            :meth:`~RollingForecaster.update` state. Give each pool its own forecaster, or
            serialise their use: a forecaster's buffers are shared by all its calls.
        max_streams: keep at most this many streams; a new stream beyond it evicts the least
            recently updated one (counted in :meth:`stats`). ``None``: no limit.
        batch_size: windows per device call (default: the forecaster's ``batch_size``).

    Thread safety: every method holds one lock, so calls from several threads are serialised
    (a snapshot copies the state under it and writes the file after releasing it). Throughput
    comes from batching many streams per call, not from concurrent calls.

    A large update can also run in steps, so that a caller serving many clients interleaves
    other updates between them: :meth:`begin` checks the rows and reserves the streams,
    :meth:`advance` forecasts the next windows, :meth:`finish` commits (or :meth:`abandon`
    drops it). Meanwhile other updates of the reserved streams are refused (reason ``"busy"``).

    Failures stay with their stream: rows a check refuses, and windows the runtime fails on
    (any exception, retried stream by stream to find the culprit), refuse that stream alone.
    """

    def __init__(
        self,
        forecaster: RollingForecaster,
        *,
        max_streams: int | None = None,
        batch_size: int | None = None,
    ) -> None:
        for name, value in (("max_streams", max_streams), ("batch_size", batch_size)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive integer or None, got {value!r}")
        self.forecaster = forecaster
        self.max_streams = max_streams
        self.batch_size = batch_size or forecaster.batch_size
        self._icl = forecaster.input_chunk_length
        self._keep = self._icl - 1
        self._n = len(forecaster.inputs)
        self._slots: OrderedDict[str, int] = OrderedDict()  # least recently updated first
        self._free: list[int] = []
        self._allocate(min(_INITIAL_CAPACITY, max_streams or _INITIAL_CAPACITY))
        self._evictions = 0
        self._total_rows = 0
        self._total_forecasts = 0
        self._rejected: Counter[str] = Counter()
        self._layout = state_layout(forecaster.manifest)
        self._busy: set[str] = set()  # streams of pending updates (begin() .. finish())
        self._lock = threading.Lock()

    # ------------------------------------------------------------------------ public API
    def update(self, rows: Mapping[str, Any], *, parameters: bool = False) -> PoolUpdate:
        """Append each stream's new rows and forecast after every row that completes a window.

        ``rows`` maps stream ids to ``{"values": ..., "timestamps": ..., "from": ...}`` (values:
        an array ``[rows, variates]`` in the bundle's input order, a DataFrame or a ``{column:
        list}`` mapping checked by column name; lists of numbers are taken as float64;
        timestamps: a list or array, or ``None``; from: optional, the stream's position the
        caller believes, i.e. the index of the first row sent) or straight to an array (no
        timestamps). A stream with any bad row, timestamps that do not follow its last one by
        exactly one step, or a ``from`` other than its position, is refused whole
        (:attr:`PoolUpdate.rejected`) and keeps its state; the others go on. All windows
        completed by the accepted streams run in ``batch_size`` chunks, one device call each.
        """
        entries = _entries(rows)
        with self._lock:
            pending = self._begin(entries, parameters, None)
            self._advance(pending, None)
            return self._finish(pending)

    def begin(self, rows: Mapping[str, Any], *, parameters: bool = False) -> PendingUpdate:
        """Check each stream's rows as :meth:`update` does and reserve the accepted streams;
        nothing is forecast or changed yet. Follow with :meth:`advance` until
        ``forecast_done``, then :meth:`finish`, or :meth:`abandon`."""
        with self._lock:
            return self._begin(_entries(rows), parameters, None)

    def advance(self, pending: PendingUpdate, max_windows: int | None = None) -> bool:
        """Forecast the next ``max_windows`` windows (all that are left by default); ``True``
        once every window is done."""
        with self._lock:
            self._advance(pending, max_windows)
            return pending.forecast_done

    def finish(self, pending: PendingUpdate) -> PoolUpdate:
        """Commit a :meth:`begin` whose windows are all forecast: the accepted streams' rows,
        counters and forecasts, as :meth:`update` returns them; the reservations end."""
        with self._lock:
            if not pending.forecast_done:
                self._advance(pending, None)
            return self._finish(pending)

    def abandon(self, pending: PendingUpdate) -> None:
        """Drop a :meth:`begin` without changing any stream (its reservations end)."""
        with self._lock:
            self._release(pending)

    def update_columnar(
        self,
        ids: Sequence[str],
        values: Any,
        timestamps: Any = None,
        *,
        parameters: bool = False,
    ) -> PoolUpdate:
        """:meth:`update` with rows in columns: row ``i`` of ``values`` (``[rows, variates]``,
        array or DataFrame) and of ``timestamps`` belongs to stream ``ids[i]``; a stream's rows
        keep their order. A rejection's ``row`` is the row of this input."""
        ids = list(ids)
        array = _from_lists(values)
        if isinstance(timestamps, list | tuple):
            timestamps = np.asarray(timestamps)
        if len(array) != len(ids) or (timestamps is not None and len(timestamps) != len(ids)):
            raise InputError(
                f"got {len(ids)} ids, {len(array)} rows and "
                f"{'no' if timestamps is None else len(timestamps)} timestamps; one id (and "
                "timestamp) per row",
                reason="shape",
            )
        groups: dict[str, list[int]] = {}
        for i, stream in enumerate(ids):
            groups.setdefault(stream, []).append(i)
        entries, row_index = [], {}
        for stream, rows in groups.items():
            index = np.asarray(rows)
            stamps = None if timestamps is None else _take(timestamps, index)
            entries.append((stream, {"values": _take(array, index), "timestamps": stamps}))
            row_index[stream] = index
        with self._lock:
            pending = self._begin(entries, parameters, row_index)
            self._advance(pending, None)
            return self._finish(pending)

    def snapshot(self, path: str | Path) -> None:
        """Write every stream's state to ``path`` atomically: a temporary file in the same
        folder, flushed to disk, then renamed over ``path``, so a crash at any point leaves
        the previous snapshot whole (and perhaps a stray ``.<name>.*.tmp`` beside it)."""
        path = Path(path)
        with self._lock:
            arrays = self._state_arrays()
        with atomic_path(path) as tmp:
            os.chmod(tmp, 0o600)  # while still empty: owner only, as snapshots have always been
            with open(tmp, "wb") as handle:
                np.savez(handle, **arrays)

    @classmethod
    def restore(cls, path: str | Path, forecaster: RollingForecaster, **kwargs: Any) -> StreamPool:
        """A pool with the streams of a :meth:`snapshot`, for any bundle whose rows mean the
        same (:func:`state_layout`: a retrained model continues every stream); ``kwargs`` go to
        the constructor. With a smaller ``max_streams`` than the snapshot's streams, the least
        recently updated ones are evicted (and counted). Raises :class:`SnapshotError` for a
        file that is not a snapshot, of another format version, or of a bundle whose inputs,
        input length or time index differ."""
        path = Path(path)
        header, arrays = _read_snapshot(path)
        pool = cls(forecaster, **kwargs)
        if header["format_version"] == 1:
            compatible = header.get("bundle_manifest_sha256") == manifest_digest(
                forecaster.manifest
            )
        else:
            compatible = header.get("layout") == pool._layout
        if not compatible:
            raise SnapshotError(
                f"{path} holds streams of another kind of bundle (its rows: "
                f"{_describe_layout(header)}), not of {forecaster.bundle} "
                f"({_describe_layout({'layout': pool._layout})}); "
                "restore it with a bundle of the same inputs, input length and time index"
            )
        ids = header["ids"]
        shape = (len(ids), pool._keep, pool._n)
        if (
            arrays["history"].shape != shape
            or any(len(a) != len(ids) for a in arrays.values())
            or len(set(ids)) != len(ids)
            or not all(isinstance(i, str) for i in ids)
        ):
            raise SnapshotError(
                f"{path} is damaged: state arrays of shapes "
                f"{ {k: a.shape for k, a in arrays.items()} } for {len(ids)} stream ids "
                f"({len(set(ids))} distinct)"
            )
        try:
            counters = header["stats"]
            pool._evictions = int(counters["evictions"])
            pool._total_rows = int(counters["rows"])
            pool._total_forecasts = int(counters["forecasts"])
            pool._rejected = Counter({str(k): int(v) for k, v in counters["rejected"].items()})
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise SnapshotError(f"{path} is damaged: unreadable counters ({err!r})") from err
        skip = 0 if pool.max_streams is None else max(0, len(ids) - pool.max_streams)
        pool._evictions += skip  # the least recently updated go first
        pool._allocate(max(len(ids) - skip, 1))
        slots = np.array([pool._take_slot() for _ in range(len(ids) - skip)], np.int64)
        pool._slots = OrderedDict(zip(ids[skip:], slots.tolist(), strict=True))
        pool._history[slots] = arrays["history"][skip:]
        for name in ("filled", "last_time", "timed", "rows", "forecasts"):
            getattr(pool, f"_{name}")[slots] = arrays[name][skip:]
        return pool

    def stats(self) -> dict:
        """Counters since the pool (or the pool it was restored from) began: live streams,
        evictions, accepted rows, forecasts, refused stream updates by reason, the limits, and
        ``state_bytes``, the memory the state arrays hold (allocated, live or free)."""
        with self._lock:
            state = (self._history, self._filled, self._last_time, self._timed, self._rows)
            return {
                "streams": len(self._slots),
                "evictions": self._evictions,
                "rows": self._total_rows,
                "forecasts": self._total_forecasts,
                "rejected": dict(self._rejected),
                "max_streams": self.max_streams,
                "batch_size": self.batch_size,
                "state_bytes": sum(a.nbytes for a in state) + self._forecasts.nbytes,
            }

    def info(self, stream: str) -> dict | None:
        """One stream's accepted rows (``rows``; ``position``, the same count, is what its next
        rows' ``"from"`` must be), forecasts and last timestamp (as the bundle's index writes
        it: ISO 8601 or an integer; ``None`` for an untimed stream); ``None`` for a stream the
        pool does not hold (never seen, dropped or evicted)."""
        with self._lock:
            slot = self._slots.get(stream)
            if slot is None:
                return None
            timed = int(self._timed[slot]) == 1
            last = np.asarray([self._last_time[slot]], np.int64)
            return {
                "rows": int(self._rows[slot]),
                "position": int(self._rows[slot]),
                "forecasts": int(self._forecasts[slot]),
                "last_time": _as_labels(last, self.forecaster.time)[0] if timed else None,
            }

    def drop(self, stream: str) -> bool:
        """Forget a stream; ``False`` when there was none of that id."""
        with self._lock:
            slot = self._slots.pop(stream, None)
            if slot is None:
                return False
            self._free.append(slot)
            return True

    def __len__(self) -> int:
        return len(self._slots)

    def __contains__(self, stream: object) -> bool:
        return stream in self._slots

    # ------------------------------------------------------------------------ updating
    def _begin(
        self,
        entries: list[tuple[Any, Any]],
        parameters: bool,
        row_index: dict[str, np.ndarray] | None,
    ) -> PendingUpdate:
        accepted: list[_Accepted] = []
        rejected: list[StreamRejection] = []
        for stream, entry in entries:
            try:
                accepted.append(self._check(stream, entry))
            except InputError as err:
                row = err.row
                if row is not None and row_index is not None and stream in row_index:
                    row = int(row_index[stream][row])
                message = f"stream {stream!r}: {err}".replace("\n", " ")
                position = self._position(stream) if err.reason == "position" else None
                rejected.append(StreamRejection(str(stream), err.reason, message, row, position))
                self._rejected[err.reason] += 1
            except Exception as err:  # a bug met by this stream's rows: refuse it alone
                logger.exception("checking the rows of stream %r failed", stream)
                rejected.append(internal_rejection(stream, err))
                self._rejected["internal"] += 1
        accepted = [a for a in accepted if a.n_new]
        ends = np.cumsum([0] + [a.n_windows for a in accepted])
        shape = (
            self.forecaster.output_chunk_length,
            len(self.forecaster.targets),
            self.forecaster.n_parameters,
        )
        forecasts = np.empty((int(ends[-1]), *shape), np.float32)
        self._busy.update(a.stream for a in accepted)
        return PendingUpdate(parameters, accepted, rejected, forecasts, ends)

    def _advance(self, pending: PendingUpdate, max_windows: int | None) -> None:
        """Forecast windows ``[done, done + max_windows)``; when the batched call fails, each
        stream's windows alone, so that only the streams the runtime fails on are refused."""
        if pending.closed:
            raise ValueError("this update was finished or abandoned")
        start = pending.done
        stop = pending.windows if max_windows is None else min(pending.windows, start + max_windows)
        if stop <= start:
            return
        try:
            pending.forecasts[start:stop] = self._forecast(pending, start, stop)
        except Exception:
            for k, a in enumerate(pending.accepted):
                lo, hi = max(start, int(pending.ends[k])), min(stop, int(pending.ends[k + 1]))
                if lo >= hi or a.stream in pending.failed:
                    continue
                try:
                    pending.forecasts[lo:hi] = self._forecast(pending, lo, hi)
                except Exception as err:
                    logger.exception("forecasting stream %r failed", a.stream)
                    pending.failed[a.stream] = f"{type(err).__name__}: {err}"
        pending.done = stop

    def _finish(self, pending: PendingUpdate) -> PoolUpdate:
        """Forecasts and state of every accepted stream the runtime did not fail on."""
        result = PoolUpdate(rejected=list(pending.rejected))
        try:
            for a in pending.accepted:  # the most recent: evict others first
                if a.slot is not None and self._slots.get(a.stream) == a.slot:
                    self._slots.move_to_end(a.stream)
            point = pending.forecasts[..., self.forecaster._point_index]
            for k, a in enumerate(pending.accepted):
                if a.stream in pending.failed:
                    result.rejected.append(internal_rejection(a.stream, pending.failed[a.stream]))
                    self._rejected["internal"] += 1
                    continue
                try:
                    stamps, horizons = self._stream_times(a)
                except InputError as err:
                    message = f"stream {a.stream!r}: {err}"
                    result.rejected.append(StreamRejection(a.stream, err.reason, message, None))
                    self._rejected[err.reason] += 1
                    continue
                for i, j in enumerate(range(int(pending.ends[k]), int(pending.ends[k + 1]))):
                    result.forecasts.append(
                        StreamForecast(
                            a.stream,
                            stamps[i] if stamps else None,
                            horizons[i] if horizons else None,
                            point[j],
                            pending.forecasts[j] if pending.parameters else None,
                        )
                    )
                self._commit(a)
                result.positions[a.stream] = int(self._rows[self._slots[a.stream]])
        finally:
            self._release(pending)
        return result

    def _release(self, pending: PendingUpdate) -> None:
        if not pending.closed:
            pending.closed = True
            self._busy.difference_update(a.stream for a in pending.accepted)

    def _check(self, stream: Any, entry: Any) -> _Accepted:
        """One stream's rows, checked as :meth:`RollingForecaster.update` checks them, with its
        windows counted; raises :class:`InputError` (with ``reason``) otherwise."""
        if not isinstance(stream, str):
            raise InputError(
                f"stream ids must be strings, got {type(stream).__name__}", reason="stream"
            )
        if isinstance(entry, Mapping):
            if "values" not in entry or set(entry) - _ENTRY_KEYS:
                raise InputError(
                    "expected {'values': ..., 'timestamps': ...} or an array of rows, got keys "
                    f"{sorted(map(str, entry))}",
                    reason="format",
                )
            values, timestamps = entry["values"], entry.get("timestamps")
            start = entry.get("from")
        else:
            values, timestamps, start = entry, None, None
        if stream in self._busy:
            raise InputError(
                "another update of this stream is in progress; send these rows again after it",
                reason="busy",
            )
        if start is not None:
            self._check_position(stream, start)
        forecaster = self.forecaster
        if isinstance(values, Mapping):  # {column: list of values}
            forecaster._check_columns([str(c) for c in values])
            columns = [_from_lists(values[c]) for c in values]
            if len({len(c) for c in columns}) > 1 or any(c.ndim != 1 for c in columns):
                raise InputError(
                    "columns of different lengths or shapes: "
                    f"{ {str(c): v.shape for c, v in zip(values, columns, strict=True)} }",
                    reason="shape",
                )
            values = np.stack(columns, axis=1) if columns else np.empty((0, 0))
        elif isinstance(values, list | tuple):
            values = _from_lists(values)
        slot = self._slots.get(stream)
        timed = None if slot is None else {-1: None, 0: False, 1: True}[int(self._timed[slot])]
        previous = self._last_time[slot] if timed else None
        values, times = forecaster._validate(values, timestamps, 0, previous=previous)
        if timed is not None and (times is not None) != timed:  # as RollingForecaster.update
            raise TimestampError(
                "earlier rows came with timestamps; pass timestamps for these rows too"
                if timed
                else "earlier rows came without timestamps; drop the stream to start it timed"
            )
        filled = 0 if slot is None else int(self._filled[slot])
        kept = self._history[slot, self._keep - filled :] if slot is not None else values[:0]
        combined = np.concatenate((kept, values)) if filled else values
        n_windows = max(0, len(combined) - self._icl + 1)
        return _Accepted(stream, slot, combined, len(values), times, n_windows)

    def position(self, stream: str) -> int:
        """The rows the pool holds of ``stream`` (what its next rows' ``"from"`` must be): 0 for
        one it does not hold."""
        with self._lock:
            return self._position(stream)

    def _position(self, stream: str) -> int:
        slot = self._slots.get(stream)
        return 0 if slot is None else int(self._rows[slot])

    def _check_position(self, stream: str, start: Any) -> None:
        """Refuse rows whose ``from`` is not the stream's position (reason ``"position"``)."""
        if not isinstance(start, int | np.integer) or isinstance(start, bool) or start < 0:
            raise InputError(
                f"'from' must be a non-negative integer (the stream's position), got {start!r}",
                reason="format",
            )
        position = self._position(stream)
        if start != position:
            held = "no rows" if not position else f"{position} row(s)"
            raise InputError(
                f"rows from position {start}, but the stream has {held} here"
                + (
                    " (rows after it were lost, or the stream was evicted or dropped): send "
                    f"the rows from position {position}"
                    if start > position
                    else f": rows {start}..{position - 1} were accepted already; send the rows "
                    f"from position {position}"
                ),
                reason="position",
            )

    def _forecast(self, pending: PendingUpdate, start: int, stop: int) -> np.ndarray:
        """Windows ``[start, stop)`` of a pending update, batched: ``[windows, H, N_t, P]``."""
        icl = self._icl
        windows = np.empty((stop - start, icl, self._n), np.float32)
        for k, a in enumerate(pending.accepted):
            lo, hi = max(start, int(pending.ends[k])), min(stop, int(pending.ends[k + 1]))
            if lo >= hi:
                continue
            first = lo - int(pending.ends[k])  # this stream's window index
            view = np.lib.stride_tricks.sliding_window_view(a.combined, icl, axis=0)
            windows[lo - start : hi - start] = view[first : first + hi - lo].transpose(0, 2, 1)
        return self.forecaster._forecast_windows(windows, self.batch_size)

    def _stream_times(self, a: _Accepted) -> tuple[list, list]:
        """The labels of one stream's forecasts (formatted per stream: one stream's fractional
        seconds never change another's labels); empty for an untimed stream."""
        if a.times is None or not a.n_windows:
            return [], []
        return self._format_times(a.times[len(a.times) - a.n_windows :])

    def _format_times(self, ends: np.ndarray) -> tuple[list, list]:
        """Window-ending timestamps (int64 ns or steps) and their forecasts' timestamps, as the
        bundle's index writes them: ISO 8601 strings or integers. A horizon beyond what int64
        holds is an :class:`InputError` (the rows' times are too close to the end of time)."""
        forecaster = self.forecaster
        time = forecaster.time
        try:
            if time.get("step_ns") or time.get("step"):  # a fixed step: one horizon, shifted
                first = forecaster.horizon_index(ends[0])
                if first is None:
                    return _as_labels(ends, time), [None] * len(ends)
                offsets = first.astype(np.int64) - np.int64(ends[0])
                with np.errstate(over="raise"):
                    horizons = ends[:, None] + offsets[None, :]
                if (horizons[:, -1] < ends).any():
                    raise OverflowError("int64 overflow")
            else:
                index = [forecaster.horizon_index(t) for t in ends]
                if index[0] is None:
                    return _as_labels(ends, time), [None] * len(ends)
                horizons = np.stack([np.asarray(h).astype(np.int64) for h in index])
        except (OverflowError, FloatingPointError, ValueError) as err:  # pandas: out of bounds
            last = _as_labels(ends[-1:], time)[0]
            raise InputError(
                f"the forecast after {last} would end beyond the latest time the index can "
                f"hold ({type(err).__name__})",
                reason="timestamps",
            ) from None
        return _as_labels(ends, time), _as_labels(horizons, time)

    def _commit(self, a: _Accepted) -> None:
        """Keep the last ``input_chunk_length - 1`` rows and the counters of an accepted
        stream, creating it (and evicting the least recently updated one) when it is new."""
        slot = a.slot
        if slot is None or self._slots.get(a.stream) != slot:  # new (or evicted this call)
            slot = self._new_stream(a.stream)
        else:
            self._slots.move_to_end(a.stream)
        tail = a.combined[max(0, len(a.combined) - self._keep) :] if self._keep else a.combined[:0]
        self._history[slot, self._keep - len(tail) :] = tail
        self._filled[slot] = len(tail)
        if a.times is not None and len(a.times):
            self._last_time[slot] = a.times[-1]
        self._timed[slot] = 1 if a.times is not None else 0
        self._rows[slot] += a.n_new
        self._forecasts[slot] += a.n_windows
        self._total_rows += a.n_new
        self._total_forecasts += a.n_windows

    def _new_stream(self, stream: str) -> int:
        if self.max_streams is not None and len(self._slots) >= self.max_streams:
            _, evicted = self._slots.popitem(last=False)
            self._free.append(evicted)
            self._evictions += 1
        slot = self._take_slot()
        self._slots[stream] = slot
        self._filled[slot] = self._rows[slot] = self._forecasts[slot] = 0
        self._timed[slot] = -1
        return slot

    # ------------------------------------------------------------------------ storage
    def _allocate(self, capacity: int) -> None:
        """(Re)allocate the state arrays with room for ``capacity`` streams, keeping slots."""
        old = getattr(self, "_history", None)
        used = 0 if old is None else len(old)
        if capacity <= used:
            return
        history = np.zeros((capacity, self._keep, self._n), np.float32)
        numbers = {
            "filled": np.zeros(capacity, np.int32),
            "last_time": np.zeros(capacity, np.int64),
            "timed": np.full(capacity, -1, np.int8),  # -1: no rows yet, 0: untimed, 1: timed
            "rows": np.zeros(capacity, np.int64),
            "forecasts": np.zeros(capacity, np.int64),
        }
        if old is not None:
            history[:used] = old
            for name, array in numbers.items():
                array[:used] = getattr(self, f"_{name}")
        self._history = history
        for name, array in numbers.items():
            setattr(self, f"_{name}", array)
        self._free.extend(range(capacity - 1, used - 1, -1))  # lowest slots first (pop())

    def _take_slot(self) -> int:
        if not self._free:
            capacity = 2 * len(self._history)
            if self.max_streams is not None:
                capacity = min(capacity, max(self.max_streams, len(self._history) + 1))
            self._allocate(capacity)
        return self._free.pop()

    def _state_arrays(self) -> dict[str, np.ndarray]:
        """Live streams in least-recently-updated order, as plain arrays and a JSON header."""
        slots = np.fromiter(self._slots.values(), np.int64, len(self._slots))
        header = {
            "format": SNAPSHOT_FORMAT,
            "format_version": SNAPSHOT_FORMAT_VERSION,
            "layout": self._layout,
            "ids": list(self._slots),
            "stats": {
                "evictions": self._evictions,
                "rows": self._total_rows,
                "forecasts": self._total_forecasts,
                "rejected": dict(self._rejected),
            },
        }
        arrays = {"header": np.frombuffer(json.dumps(header).encode(), np.uint8)}
        arrays["history"] = self._history[slots]
        for name in ("filled", "last_time", "timed", "rows", "forecasts"):
            arrays[name] = getattr(self, f"_{name}")[slots]
        return arrays


def state_layout(manifest: Mapping[str, Any]) -> dict:
    """What a stream's stored state means, and so which bundles a snapshot loads into: the
    inputs (names, in order), the input length (rows kept) and the time index (kind and step:
    the gap check follows it). The weights, the scaler and the horizon do not matter: the
    state is raw rows, and the model runs on them afresh."""
    model = manifest["model"]
    time = manifest.get("time") or {}
    return {
        "inputs": [str(name) for name in model["inputs"]],
        "input_chunk_length": int(model["input_chunk_length"]),
        "time": {key: time.get(key) for key in ("index", "freq", "step_ns", "step")},
    }


def manifest_digest(manifest: Mapping[str, Any]) -> str:
    """sha256 of a bundle's manifest (canonical JSON): what format-1 snapshots were bound to."""
    canonical = json.dumps(manifest, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _describe_layout(header: Mapping[str, Any]) -> str:
    layout = header.get("layout")
    if not isinstance(layout, Mapping):  # format 1: bound to one bundle
        digest = str(header.get("bundle_manifest_sha256"))
        return f"the bundle of manifest sha256 {digest[:12]}..."
    time = layout.get("time") or {}
    step = time.get("freq") or time.get("step") or "no frequency"
    return (
        f"inputs {layout.get('inputs')}, input length {layout.get('input_chunk_length')}, "
        f"{time.get('index') or 'no'} time index ({step})"
    )


def open_pool(
    path: Path | None, forecaster: RollingForecaster, **kwargs: Any
) -> tuple[StreamPool, Path | None]:
    """The pool of the snapshot at ``path`` (:meth:`StreamPool.restore`), or an empty one when
    there is none; a snapshot that cannot be restored (damaged, of another format or another
    kind of bundle) is renamed ``<name>.set-aside-<UTC time>`` beside it, logged, and the pool
    starts empty, so that a bad file never keeps a server from starting. Returns the pool and
    the path of the file set aside, if any."""
    if path is None or not path.exists():
        return StreamPool(forecaster, **kwargs), None
    try:
        return StreamPool.restore(path, forecaster, **kwargs), None
    except SnapshotError as err:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        aside = path.with_name(f"{path.name}.set-aside-{stamp}")
        os.replace(path, aside)
        logger.error("%s; moved it to %s and started with no streams", err, aside.name)
        return StreamPool(forecaster, **kwargs), aside


def _read_snapshot(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    names = ("history", "filled", "last_time", "timed", "rows", "forecasts")
    try:
        with np.load(path, allow_pickle=False) as data:
            header = json.loads(data["header"].tobytes().decode())
            if not isinstance(header, dict) or header.get("format") != SNAPSHOT_FORMAT:
                raise SnapshotError(f"{path} is not a StreamPool snapshot")
            version = header.get("format_version")
            if version not in _READABLE_VERSIONS:
                raise SnapshotError(
                    f"{path} is a StreamPool snapshot of format version {version}; this runtime "
                    f"reads versions {list(_READABLE_VERSIONS)}"
                )
            arrays = {name: data[name] for name in names}
    except SnapshotError:
        raise
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise SnapshotError(f"cannot read the StreamPool snapshot {path}: {err}") from err
    bound_to = "bundle_manifest_sha256" if header["format_version"] == 1 else "layout"
    missing = {bound_to, "ids", "stats"} - set(header)
    if missing:
        raise SnapshotError(f"{path} is damaged: its header lacks {sorted(missing)}")
    return header, arrays


def _entries(rows: Any) -> list[tuple[Any, Any]]:
    """The ``(stream, rows)`` pairs of an :meth:`StreamPool.update` argument."""
    if not isinstance(rows, Mapping):
        raise InputError(
            "rows must map stream ids to {'values': ..., 'timestamps': ...} or to arrays, "
            f"got {type(rows).__name__}",
            reason="format",
        )
    return list(rows.items())


def internal_rejection(stream: Any, err: BaseException | str) -> StreamRejection:
    """A stream refused because the runtime failed on it (not its input's fault)."""
    what = err if isinstance(err, str) else f"{type(err).__name__}: {err}"
    message = f"stream {stream!r}: the server failed on this stream's rows ({what[:200]})"
    return StreamRejection(str(stream), "internal", message.replace("\n", " "), None)


def _from_lists(values: Any) -> Any:
    """Python lists (parsed JSON) as an array: integers and ``None`` (NaN, refused later) become
    float64; numpy arrays, tensors and DataFrames pass unchanged for the forecaster's checks."""
    if not isinstance(values, list | tuple):
        return values
    try:
        array = np.asarray(values)
    except ValueError as err:  # ragged
        raise InputError(f"rows of different lengths ({err})", reason="shape") from err
    if array.dtype.kind in "iuO":
        try:
            array = np.asarray(values, dtype=np.float64)
        except (ValueError, TypeError) as err:
            raise InputError(f"values must be numbers ({err})", reason="dtype") from err
    return array


def _take(rows: Any, index: np.ndarray) -> Any:
    """Rows ``index`` of an array, tensor, DataFrame, Series or pandas index, by position."""
    if hasattr(rows, "iloc"):
        return rows.iloc[index]
    return rows[index]


def _as_labels(times: np.ndarray, time: Mapping[str, Any]) -> list:
    """int64 timestamps (any shape) as nested lists of integers (range-index bundles) or of
    ISO 8601 strings, to the second unless there are fractions (the runtime reads the timestamps
    of any other bundle as datetimes)."""
    if time.get("index") == "range":
        return np.asarray(times, np.int64).tolist()
    unit = "s" if not (np.asarray(times) % 10**9).any() else "ns"
    return np.datetime_as_string(np.asarray(times, "datetime64[ns]"), unit=unit).tolist()
