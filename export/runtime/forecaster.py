"""The deployment runtime: rolling and streaming forecasts from a bundle with numpy, onnxruntime
and the library's rasteriser (numba) only, plus torch on the torch vision path: no Darts,
Lightning, transformers or matplotlib.

:class:`RollingForecaster` checks inputs, applies the bundle's scaler and keeps a stream's state;
an engine turns scaled windows into forecasts. Two engines, one per vision path:

- ``"onnx"`` (:mod:`timesclip_export.runtime.onnx_engine`): the ViT as ``vision.onnx`` in ONNX
  Runtime; imports no torch, so it runs on a host without it;
- ``"torch"`` (:mod:`timesclip_export.runtime.torch_engine`): the ViT as ``vision.pt2`` in torch,
  with the design's GPU placements (CUDA, mixed) and fp16/bf16 autocast.

``vision="auto"`` takes the torch path where torch sees CUDA and the ONNX path elsewhere (on CPU it
is the faster one, ``benchmarks/README_runtime.md``; without torch the only one), or the torch path
for bundles that hold no ``vision.onnx`` (format 2).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
from timesclip_export.bundle.format import (
    GRAPH_FILES,
    OPTIMIZED_FILES,
    VISION_FILE,
    check_versions,
    has_onnx_vision,
    read_bundle_files,
    read_manifest,
)
from timesclip_export.errors import (
    BundleSignatureError,
    BundleVersionError,
    InputError,
    TimestampError,
)
from timesclip_export.runtime.placement import Placement
from timesclip_export.runtime.timestamps import read_timestamps

from timesclip_darts.checks import first_bad_value, timestamp_problem
from timesclip_darts.scaling import StandardScaling

VISION_PATHS = ("auto", "torch", "onnx")
VISION_DTYPES = ("float32", "float16", "bfloat16")
# Bound on input magnitudes when a bundle does not state one. Bundles carry the core model's own
# (``timesclip_darts.preprocessor.MAX_ABS_VALUE``, beyond which float32 window statistics
# overflow), so the runtime needs no import of the training package for it.
DEFAULT_MAX_ABS_VALUE = 1e18


class RollingForecaster:
    """Forecasts from an exported TimesCLIP bundle: one window, many windows, or a stream.

    Args:
        bundle: the bundle folder written by ``timesclip-darts export``.
        vision: ``"onnx"`` (``vision.onnx`` in ONNX Runtime, no torch needed), ``"torch"``
            (``vision.pt2`` in torch) or ``"auto"``: torch where torch sees CUDA or an option
            only it has is asked for (``vision_dtype``, ``compile_vision``, a mixed placement)
            or the bundle has no ``vision.onnx``; ONNX elsewhere (the faster path on CPU).
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``, or a
            :class:`~timesclip_export.runtime.placement.Placement`. Torch path: CUDA when both
            torch and onnxruntime have it; mixed when only torch has it (rasteriser and ViT on
            CUDA, graphs on ORT's CPU); else CPU. ONNX path: ORT's CUDA provider when present,
            else CPU. :meth:`describe` says what was picked and why.
        optimized: run the ORT-optimised graphs (fused attention/LayerNorm/GELU) or the plain ones.
        batch_size: windows per forward pass in :meth:`rolling` and :meth:`update`.
        vision_batch: windows per call of the vision path within a batch (default: as many as
            fit a pixel budget, smaller on CPU where cache-sized slices are faster).
        vision_dtype: ``"float32"``, or ``"float16"``/``"bfloat16"`` to run the ViT under autocast
            (the images and the ONNX graphs stay float32; torch path).
        apply_scaler: with a scaler in the bundle, scale inputs and inverse-scale forecasts here
            (the default); ``False`` when the inputs are already scaled as in training.
        compile_vision: run the ViT program through ``torch.compile`` (torch path). The first
            call compiles for tens of seconds and needs a C++ compiler on CPU, triton on CUDA;
            on this project's CPU it does not pay (``benchmarks/README_runtime.md``), on CUDA it
            is untested.
        onnx_threads: ONNX Runtime's intra-op threads (default: its own, one per core), and the
            rasteriser's on the ONNX path; torch's are set with ``torch.set_num_threads``.
        verify: check the folder holds the listed files only and every file's sha256 against
            the manifest on load. Each file loaded is read once and loaded from the bytes
            checked, so a file changed after the check is never loaded.
        allow_version_mismatch: warn instead of failing when the libraries differ from the
            exporter's in a way that can change results.
        trusted_key: an Ed25519 public key (PEM file path or bytes): refuse the bundle unless
            its ``manifest.sig`` is a valid signature of its manifest by that key. The manifest
            holds every file's sha256, so this covers every file; ``verify=False`` with a
            trusted key is refused (:class:`BundleSignatureError`).

    Inputs are ``[rows, variates]`` arrays (numpy, torch or a pandas DataFrame whose columns are
    checked by name) of raw values in the manifest's ``inputs`` order: the targets, then any past
    covariates. When the bundle holds a scaler, inputs are scaled and forecasts inverse-scaled
    here, so both are in the original units. Forecasts are ``[..., output_chunk_length,
    n_targets]``; with ``parameters=True``, ``[..., n_targets, n_parameters]`` holding the
    likelihood's parameters (``parameter_names``): quantiles for ``QuantileRegression``, the
    location and scale for Gaussian/Laplace/Cauchy/Gumbel. The point forecast is the median or
    the location.
    """

    def __init__(
        self,
        bundle: str | Path,
        *,
        vision: str = "auto",
        device: str | Placement = "auto",
        optimized: bool = True,
        batch_size: int = 256,
        vision_batch: int | None = None,
        vision_dtype: str = "float32",
        apply_scaler: bool = True,
        compile_vision: bool = False,
        onnx_threads: int | None = None,
        verify: bool = True,
        allow_version_mismatch: bool = False,
        trusted_key: str | Path | bytes | None = None,
    ) -> None:
        for name, value in (("batch_size", batch_size), ("vision_batch", vision_batch or 1)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if vision_dtype not in VISION_DTYPES:
            raise ValueError(f"vision_dtype must be one of {list(VISION_DTYPES)}")
        if vision not in VISION_PATHS:
            raise ValueError(f"vision must be one of {list(VISION_PATHS)}, got {vision!r}")
        if trusted_key is not None and not verify:
            raise BundleSignatureError(
                "verify=False with a trusted_key: the signature covers the files through their "
                "checksums, which verify=False skips; keep verify=True to use a trusted key"
            )
        self.bundle = Path(bundle)
        self.manifest = read_manifest(self.bundle, trusted_key=trusted_key)
        self.signature_checked = trusted_key is not None
        self.vision = _vision_path(
            vision, self.manifest, device, vision_dtype != "float32" or compile_vision
        )
        optimized = optimized and bool(self.manifest["onnx"].get("optimized"))
        files = OPTIMIZED_FILES if optimized else GRAPH_FILES
        loaded = [files[part] for part in ("text", "fusion")]
        loaded.append(files["vision"] if self.vision == "onnx" else VISION_FILE)
        # Read once, checked, loaded from these bytes: the files on disk are not opened again.
        contents = read_bundle_files(self.bundle, self.manifest, loaded, verify)
        check_versions(self.manifest, optimized, allow_version_mismatch, vision=self.vision)
        spec = self.manifest["model"]
        self.input_chunk_length: int = spec["input_chunk_length"]
        self.output_chunk_length: int = spec["output_chunk_length"]
        self.output_chunk_shift: int = spec["output_chunk_shift"]
        self.inputs: list[str] = list(spec["inputs"])
        self.targets: list[str] = list(spec["targets"])
        likelihood = spec["likelihood"]
        self.parameter_names: list[str] = list(likelihood["parameters"])
        self._point_index: int = likelihood["point_index"]
        self.time: dict = self.manifest["time"]
        self.max_abs_value = float(spec.get("max_abs_value", DEFAULT_MAX_ABS_VALUE))
        self.optimized = optimized
        self.batch_size = batch_size
        self.vision_dtype = vision_dtype
        self.onnx_threads = onnx_threads
        if self.vision == "onnx":
            from timesclip_export.runtime.onnx_engine import OnnxEngine

            self._engine: Any = OnnxEngine(
                contents,
                self.manifest,
                files,
                device,
                vision_batch=vision_batch,
                onnx_threads=onnx_threads,
            )
        else:
            from timesclip_export.runtime.torch_engine import TorchEngine

            self._engine = TorchEngine(
                contents,
                self.manifest,
                files,
                device,
                vision_batch=vision_batch,
                vision_dtype=vision_dtype,
                compile_vision=compile_vision,
                onnx_threads=onnx_threads,
            )
        self.placement: Placement = self._engine.placement
        self.vision_batch: int = self._engine.vision_batch
        self.apply_scaler = apply_scaler and bool(self.manifest.get("scaler"))
        self._set_scaler(self.manifest.get("scaler") if apply_scaler else None, likelihood["kinds"])
        self.reset()

    # ------------------------------------------------------------------------ public API
    @property
    def n_parameters(self) -> int:
        return len(self.parameter_names)

    @property
    def freq(self) -> str | None:
        return self.time.get("freq")

    def describe(self) -> str:
        """Where this runs, in words: vision path, device, execution provider, graphs."""
        graphs = "optimised" if self.optimized else "plain"
        scaler = "applied" if self.apply_scaler else "not applied"
        signature = "; signature verified" if self.signature_checked else ""
        return (
            f"{self._engine.describe()}; {graphs} ONNX graphs; scaler {scaler}{signature}; "
            f"bundle {self.bundle}"
        )

    def reset(self) -> None:
        """Forget the rows :meth:`update` has seen."""
        self._history = np.empty((0, len(self.inputs)), dtype=np.float32)
        self._last_time: np.int64 | None = None
        self._timed: bool | None = None
        self.rows_seen = 0

    def forecast(self, window: Any, timestamps: Any = None, parameters: bool = False) -> np.ndarray:
        """Forecast after the last row of ``window`` (at least ``input_chunk_length`` rows; the
        last ones are used): ``[output_chunk_length, n_targets]``."""
        values, _ = self._validate(window, timestamps, self.input_chunk_length)
        return self._forecast_series(values[-self.input_chunk_length :], 1, parameters)[0]

    def rolling(
        self, values: Any, stride: int = 1, timestamps: Any = None, parameters: bool = False
    ) -> np.ndarray:
        """Forecasts after windows ``values[s : s + input_chunk_length]`` for ``s = 0, stride,
        ...`` up to the last full window: ``[n_windows, output_chunk_length, n_targets]``.

        With stride 1 the first ``n - input_chunk_length - output_chunk_length + 1`` windows are
        the ones Darts' ``historical_forecasts(retrain=False, last_points_only=False)`` uses; the
        rest forecast past the end of ``values``.
        """
        if not isinstance(stride, int) or stride < 1:
            raise InputError(f"stride must be a positive integer, got {stride!r}")
        series, _ = self._validate(values, timestamps, self.input_chunk_length)
        return self._forecast_series(series, stride, parameters)

    def update(self, rows: Any, timestamps: Any = None, parameters: bool = False) -> np.ndarray:
        """Append newly observed rows; return a forecast for every new row that ends a full
        window, ``[k, output_chunk_length, n_targets]`` (``k`` may be 0 while the first window
        fills up). Rows are checked first and the state changes only if they pass: with
        timestamps, the first new row must follow the last one seen by exactly one step."""
        values, times = self._validate(rows, timestamps, 0, previous=self._last_time)
        if self._timed is not None and (times is not None) != self._timed:
            raise TimestampError(
                "earlier rows came with timestamps; pass timestamps for these rows too"
                if self._timed
                else "earlier rows came without timestamps; call reset() to start a timed stream"
            )
        icl = self.input_chunk_length
        combined = np.concatenate([self._history, values])
        first_end = max(len(self._history), icl - 1)
        if len(combined) > first_end:
            out = self._forecast_series(combined[first_end - icl + 1 :], 1, parameters)
        else:
            shape = (0, self.output_chunk_length, len(self.targets))
            out = np.empty(shape + ((self.n_parameters,) if parameters else ()), np.float32)
        self._history = combined[len(combined) - min(len(combined), icl - 1) :]
        if times is not None and len(times):
            self._last_time = times[-1]
        if len(values):
            self._timed = times is not None
        self.rows_seen += len(values)
        return out

    def horizon_index(self, last_time: Any) -> np.ndarray | None:
        """Timestamps of the forecast after a window ending at ``last_time`` (``None`` when the
        bundle's frequency is unknown). ``last_time`` is a timestamp as the runtime stores them
        (int64 ns or steps) or any one :func:`read_timestamps` takes."""
        step = self.time.get("step_ns") or self.time.get("step")
        offsets = np.arange(1, self.output_chunk_length + 1) + self.output_chunk_shift
        kind = self.time.get("index")
        if kind == "datetime":
            if isinstance(last_time, int | np.integer) and not isinstance(last_time, bool):
                start = np.datetime64(int(last_time), "ns")  # as stored: ns since the epoch
            else:
                start = read_timestamps([last_time], kind).view("datetime64[ns]")[0]
            if step:
                return start + offsets * np.timedelta64(step, "ns")
            import pandas as pd

            index = pd.date_range(start, periods=offsets[-1] + 1, freq=self.time["freq"])
            return index[offsets].to_numpy()
        if kind == "range" and step:
            return int(last_time) + offsets * step
        return None

    # ------------------------------------------------------------------------ checks
    def _validate(
        self, values: Any, timestamps: Any, min_rows: int, previous: np.int64 | None = None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Values as float32 ``[rows, N]`` and timestamps as int64 (ns or steps), or errors."""
        if hasattr(values, "columns") and hasattr(values, "to_numpy"):  # a pandas DataFrame
            self._check_columns([str(c) for c in values.columns])
            if timestamps is None and getattr(values.index.dtype, "kind", "") == "M":
                timestamps = values.index
            array = values.to_numpy()
        elif hasattr(values, "detach") and hasattr(values, "numpy"):  # a torch tensor
            array = values.detach().cpu().numpy()
        else:
            array = np.asarray(values)
        if not np.issubdtype(array.dtype, np.floating):
            raise InputError(
                f"values must be floating-point (float32 or float64), got dtype {array.dtype}; "
                "convert with .astype(numpy.float32)",
                reason="dtype",
            )
        if array.ndim == 1:  # one variate's rows, or one row of all variates
            array = array[:, None] if len(self.inputs) == 1 else array[None, :]
        if array.ndim != 2:
            raise InputError(
                f"expected a 2-D array [rows, variates], got shape {tuple(array.shape)}",
                reason="shape",
            )
        rows, n = array.shape
        if n != len(self.inputs):
            raise InputError(
                f"expected {len(self.inputs)} variates {self.inputs} (targets, then past "
                f"covariates), got {n} columns",
                reason="columns",
            )
        if rows < min_rows:
            raise InputError(
                f"got {rows} rows; a window needs {min_rows} (input_chunk_length)", reason="shape"
            )
        times = self._validate_times(timestamps, rows, previous)
        array = array.astype(np.float32, copy=False)
        bad = first_bad_value(array, self.max_abs_value)
        if bad is not None:
            row, col = bad.index
            where = f" ({_format_time(times[row], self.time)})" if times is not None else ""
            raise InputError(
                f"row {row}{where}, variate '{self.inputs[col]}': {bad.problem(self.max_abs_value)}"
                + ("" if bad.finite else "; inputs must be finite (fill gaps before forecasting)"),
                row=row,
                reason="too_large" if bad.finite else "nan",
            )
        return np.ascontiguousarray(array), times

    def _check_columns(self, columns: list[str]) -> None:
        if columns == self.inputs:
            return
        if sorted(columns) == sorted(self.inputs):
            raise InputError(
                f"variates are in the wrong order: expected {self.inputs}, got {columns}",
                reason="columns",
            )
        missing = [c for c in self.inputs if c not in columns]
        extra = [c for c in columns if c not in self.inputs]
        raise InputError(
            f"variates do not match the model's: missing {missing}, unexpected {extra}; "
            f"expected {self.inputs} in this order",
            reason="columns",
        )

    def _validate_times(
        self, timestamps: Any, rows: int, previous: np.int64 | None
    ) -> np.ndarray | None:
        if timestamps is None:
            return None
        kind = self.time.get("index")
        times = read_timestamps(timestamps, kind)
        if len(times) != rows:
            raise TimestampError(f"got {len(times)} timestamps for {rows} rows")
        full = times if previous is None else np.concatenate([[previous], times])
        if len(full) < 2:
            return times
        offset = 0 if previous is None else 1
        step = self.time.get("step_ns") if kind == "datetime" else self.time.get("step")
        problem = timestamp_problem(full, step)
        if problem is not None:
            i, row = problem.index, problem.index - offset
            if problem.kind != "gap":
                raise TimestampError(
                    f"{problem.kind} timestamp {_format_time(full[i], self.time)} at row {row} "
                    f"(after {_format_time(full[i - 1], self.time)})",
                    row=row,
                    reason=problem.kind.replace("-", "_"),  # duplicate, out_of_order
                )
            detail = (
                f"{problem.missing_steps} missing step(s)"
                if problem.missing_steps is not None
                else "an irregular step"
            )
            raise TimestampError(
                f"gap in timestamps: {_format_time(full[i - 1], self.time)} -> "
                f"{_format_time(full[i], self.time)} at row {row} is {detail} at frequency "
                f"{self.time.get('freq') or step}",
                row=row,
                reason="gap",
            )
        if step:
            return times
        if kind == "datetime" and self.time.get("freq"):
            import pandas as pd

            try:  # fails past 2262 (or for a frequency pandas cannot step)
                expected = (
                    pd.date_range(
                        pd.Timestamp(int(full[0])), periods=len(full), freq=self.time["freq"]
                    )
                    .as_unit("ns")
                    .asi8
                )
            except (ValueError, TypeError, OverflowError) as err:
                raise TimestampError(
                    f"cannot step {len(full)} times at frequency {self.time['freq']} from "
                    f"{_format_time(full[0], self.time)} ({err})"
                ) from err
            wrong = full != expected
            if wrong.any():
                i = int(np.argmax(wrong))
                raise TimestampError(
                    f"gap in timestamps: expected {_format_time(expected[i], self.time)} at "
                    f"row {i - offset}, got {_format_time(full[i], self.time)} "
                    f"(frequency {self.time['freq']})",
                    row=i - offset,
                    reason="gap",
                )
        return times

    # ------------------------------------------------------------------------ computing
    def _forecast_series(self, series: np.ndarray, stride: int, parameters: bool) -> np.ndarray:
        """Forecasts after every ``stride``-th full window of a validated raw series."""
        out = self._engine.forecast(self._scale_inputs(series), stride, self.batch_size)
        result = self._unscale_forecasts(out)
        return result if parameters else result[..., self._point_index]

    def _forecast_windows(self, windows: np.ndarray, batch_size: int | None = None) -> np.ndarray:
        """Forecasts ``[W, H, N_t, P]`` after validated raw windows ``[W, T, N]``,
        ``batch_size`` (default :attr:`batch_size`) per engine call; shared with
        :class:`~timesclip_export.service.stream_pool.StreamPool`."""
        batch_size = batch_size or self.batch_size
        out = self._engine.forecast(self._scale_inputs(windows), None, batch_size)
        return self._unscale_forecasts(out)

    def _scale_inputs(self, values: np.ndarray) -> np.ndarray:
        """Raw float32 values ``[..., N]`` -> the model's scaled units (both vision paths see the
        same scaled values)."""
        if self._in_mean is None:
            return values
        return (values - self._in_mean) / self._in_scale

    def _unscale_forecasts(self, out: np.ndarray) -> np.ndarray:
        """Forecasts ``[..., N_t, P]`` in scaled units -> original units."""
        if self._out_scale is None:
            return out
        return out * self._out_scale + self._out_shift

    def _set_scaler(self, scaler: dict | None, kinds: list[str]) -> None:
        """Per-input shift/scale (identity for unscaled columns) and per-target output maps
        (the scale for every parameter, the shift for location parameters only)."""
        self._in_mean = self._in_scale = self._out_scale = self._out_shift = None
        if not scaler:
            return
        scaling = StandardScaling.from_payload(scaler)
        self._in_mean, self._in_scale = scaling.params(self.inputs, unscaled_ok=True)
        out_mean, out_scale = scaling.params(self.targets, unscaled_ok=True)
        location = np.array([1.0 if kind == "location" else 0.0 for kind in kinds], np.float32)
        self._out_scale = np.repeat(out_scale[:, None], len(kinds), axis=1)  # [N_t, P]
        self._out_shift = out_mean[:, None] * location[None, :]


def _vision_path(vision: str, manifest: dict, device: Any, torch_options: bool) -> str:
    """``"torch"`` or ``"onnx"`` for the requested ``vision`` (see :class:`RollingForecaster`);
    a requested path the bundle or this host cannot run is a :class:`BundleVersionError` or an
    ``ImportError`` naming what is missing."""
    onnx_in_bundle = has_onnx_vision(manifest)
    torch_here = importlib.util.find_spec("torch") is not None
    split = isinstance(device, Placement) and device.split
    if vision == "onnx":
        if not onnx_in_bundle:
            raise BundleVersionError(
                f"the bundle (format {manifest.get('format_version')}) holds no vision.onnx: "
                "export the model again for the ONNX vision path, or use vision='torch'"
            )
        if torch_options or split:
            raise ValueError(
                "vision_dtype other than float32, compile_vision and mixed placements need "
                "vision='torch'"
            )
        return "onnx"
    if vision == "torch" or not onnx_in_bundle or torch_options or split:
        if not torch_here:
            raise ImportError(
                "the torch vision path needs torch, which is not installed; use vision='onnx' "
                "(a bundle exported with timesclip-darts >= format 3)"
            )
        return "torch"
    if not torch_here or device == "cpu":
        return "onnx"
    import torch

    return "torch" if torch.cuda.is_available() else "onnx"


def _format_time(value: np.int64, time: dict) -> str:
    """A timestamp for messages: ``2016-07-01 03:00:00`` (sub-second digits only if any)."""
    if time.get("index") == "range":
        return str(int(value))
    unit = "s" if int(value) % 10**9 == 0 else "ns"
    return np.datetime_as_string(np.datetime64(int(value), "ns"), unit=unit).replace("T", " ")
