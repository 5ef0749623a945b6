"""The deployment runtime: rolling and streaming forecasts from a bundle with torch, numpy,
onnxruntime and the library's rasteriser (``timesclip_darts.rendering``, numba on CPU) only: no
Darts, Lightning, transformers or matplotlib.

Per batch of windows, the vision program (torch) and the two ONNX graphs (ONNX Runtime) read and
write preallocated torch tensors through I/O binding. Where both run on one device (``cpu`` or
``cuda``), everything stays there: the windows are cut from the series on the device (one
host-to-device copy per call) and only the final forecasts come back to the host; on CUDA, ONNX
Runtime runs on torch's current stream (``user_compute_stream``), so the two libraries' kernels
are ordered without host syncs. Where torch has CUDA and onnxruntime only its CPU provider, the
placement is **mixed** (:mod:`timesclip_export.runtime.placement`): the rasteriser and the
ViT run on CUDA into device buffers, the text graph runs on host windows meanwhile, and the
features are copied to the host once per batch for the fusion graph.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from timesclip_export.bundle.format import (
    GRAPH_FILES,
    OPTIMIZED_FILES,
    VISION_FILE,
    check_versions,
    load_vision_program,
    read_manifest,
    verify_files,
)
from timesclip_export.errors import InputError, TimestampError
from timesclip_export.runtime.placement import Placement, choose_placement, open_session
from timesclip_export.runtime.vision import window_vision

from timesclip_darts.checks import first_bad_value, timestamp_problem
from timesclip_darts.scaling import StandardScaling

VISION_DTYPES: dict[str, torch.dtype | None] = {
    "float32": None,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
# Pixels per vision call (images x S²). On CPU, slices of ~2^19 pixels keep the ViT's activations
# cache-friendly: re-measured with the numba rasteriser (1 thread), 64-128 windows per call were
# fastest for the tiny preset and ~16 for the small one, and whole batches of 256 windows 5-45 %
# slower. On CUDA the dense torch rasteriser's temporaries are ~20 floats per pixel: 2^24 pixels
# (~1.3 GB) keep the GPU busy while bounding memory at 224 px.
_VISION_PIXELS = {"cpu": 1 << 19, "cuda": 1 << 24}
_CACHED_BATCH_SIZES = 4
# Bound on input magnitudes when a bundle does not state one. Bundles carry the core model's own
# (``timesclip_darts.preprocessor.MAX_ABS_VALUE``, beyond which float32 window statistics
# overflow), so the runtime needs no import of the training package for it.
DEFAULT_MAX_ABS_VALUE = 1e18


@dataclass
class _Buffers:
    """Preallocated tensors for one batch size and the I/O bindings that point at them.

    ``x``, ``text``, ``features`` and ``forecast`` are the graphs' (on the graph device);
    ``vision_x`` and ``vision_features`` are the vision half's: the same tensors as ``x`` and
    ``features`` when both halves share a device, separate ones on the vision device when the
    placement is split (mixed)."""

    x: torch.Tensor
    text: dict[str, torch.Tensor]
    features: torch.Tensor
    forecast: torch.Tensor
    text_binding: Any
    fusion_binding: Any
    vision_x: torch.Tensor
    vision_features: torch.Tensor


class RollingForecaster:
    """Forecasts from an exported TimesCLIP bundle: one window, many windows, or a stream.

    Args:
        bundle: the bundle folder written by ``timesclip-darts export``.
        device: ``"auto"`` (CUDA when both torch and onnxruntime have it; mixed when only torch
            has it: rasteriser and ViT on CUDA, graphs on ORT's CPU; else CPU), ``"cpu"``,
            ``"cuda"`` or ``"cuda:N"`` (mixed too when onnxruntime lacks CUDA), or a
            :class:`~timesclip_export.runtime.placement.Placement`. :meth:`describe` says what was
            picked and why.
        optimized: run the ORT-optimised graphs (fused attention/LayerNorm/GELU) or the plain ones.
        batch_size: windows per forward pass in :meth:`rolling` and :meth:`update`.
        vision_batch: windows per call of the vision path within a batch (default: as many as
            fit a pixel budget, smaller on CPU where cache-sized slices are faster).
        vision_dtype: ``"float32"``, or ``"float16"``/``"bfloat16"`` to run the ViT under autocast
            (the images and the ONNX graphs stay float32).
        apply_scaler: with a scaler in the bundle, scale inputs and inverse-scale forecasts here
            (the default); ``False`` when the inputs are already scaled as in training.
        compile_vision: run the ViT program through ``torch.compile``. The first call compiles
            for tens of seconds and needs a C++ compiler on CPU, triton on CUDA; on this
            project's CPU it no longer pays (the rasteriser, which it used to fuse, is the numba
            kernel now: ``benchmarks/README_runtime.md``), on CUDA it is untested.
        onnx_threads: ONNX Runtime's intra-op threads (default: its own, one per core); torch's
            are set with ``torch.set_num_threads``.
        verify: check every file's sha256 against the manifest on load.
        allow_version_mismatch: warn instead of failing when the libraries differ from the
            exporter's in a way that can change results.
        trusted_key: an Ed25519 public key (PEM file path or bytes): refuse the bundle unless
            its ``manifest.sig`` is a valid signature of its manifest by that key. The manifest
            holds every file's sha256, so with ``verify`` this covers every file.

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
        self.bundle = Path(bundle)
        self.manifest = read_manifest(self.bundle, trusted_key=trusted_key)
        self.signature_checked = trusted_key is not None
        if verify:
            verify_files(self.bundle, self.manifest)
        optimized = optimized and bool(self.manifest["onnx"].get("optimized"))
        check_versions(self.manifest, optimized, allow_version_mismatch)
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

        self.placement = device if isinstance(device, Placement) else _placement_for(device)
        self.device = torch.device(self.placement.vision_device)  # windows, rasteriser, ViT
        self._graph_device = torch.device(self.placement.graph_device)
        files = OPTIMIZED_FILES if optimized else GRAPH_FILES
        self._text = self._session(self.bundle / files["text"])
        self._fusion = self._session(self.bundle / files["fusion"])
        program = load_vision_program(self.bundle / VISION_FILE, str(self.device))
        if compile_vision:
            program = torch.compile(program, dynamic=True)
        self._vision = window_vision(program, spec, VISION_DTYPES[vision_dtype])
        self.compile_vision = compile_vision
        pixels = spec["image_size"] ** 2 * len(self.inputs)
        self.vision_batch = vision_batch or max(1, _VISION_PIXELS[self.device.type] // pixels)
        self._shapes = {
            "cls": (len(self.inputs), spec["d_model"]),
            "patch_tokens": (len(self.inputs), spec["n_patches"], spec["d_model"]),
            "variate_tokens": (len(self.inputs), spec["d_model"]),
            "mean": (1, len(self.inputs)),
            "std": (1, len(self.inputs)),
        }
        self._buffers: OrderedDict[int, _Buffers] = OrderedDict()
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
        """Where this runs, in words: device, execution provider, graphs, dtype."""
        graphs = "optimised" if self.optimized else "plain"
        compiled = ", compiled" if self.compile_vision else ""
        scaler = "applied" if self.apply_scaler else "not applied"
        signature = "; signature verified" if self.signature_checked else ""
        provider = self._text.get_providers()[0]
        gpu = f" ({torch.cuda.get_device_name(self.device)})" if self.device.type == "cuda" else ""
        mode = self.placement.mode
        if mode == "mixed":
            where = (
                f"mixed: rasteriser and ViT in torch on {self.device}{gpu}, ONNX graphs in "
                f"onnxruntime {provider} on {self._graph_device}, features copied once per batch"
            )
        else:
            where = f"{mode.upper()}{gpu}: torch on {self.device}, onnxruntime {provider}"
        return (
            f"{where} ({self.placement.reason}); {graphs} ONNX graphs, vision in "
            f"{self.vision_dtype}{compiled}; scaler {scaler}{signature}; bundle {self.bundle}"
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
        bundle's frequency is unknown)."""
        step = self.time.get("step_ns") or self.time.get("step")
        offsets = np.arange(1, self.output_chunk_length + 1) + self.output_chunk_shift
        if self.time.get("index") == "datetime":
            start = np.datetime64(_to_datetime64(last_time), "ns")
            if step:
                return start + offsets * np.timedelta64(step, "ns")
            import pandas as pd

            index = pd.date_range(start, periods=offsets[-1] + 1, freq=self.time["freq"])
            return index[offsets].to_numpy()
        if self.time.get("index") == "range" and step:
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
        elif isinstance(values, torch.Tensor):
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
        try:
            if kind == "range":
                times = np.asarray(timestamps, dtype=np.int64)
            else:
                times = _to_datetime64(timestamps).astype("datetime64[ns]").astype(np.int64)
        except (ValueError, TypeError) as err:
            raise TimestampError(f"could not read the timestamps ({err})") from err
        times = np.atleast_1d(times)
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

            expected = pd.date_range(
                pd.Timestamp(full[0]), periods=len(full), freq=self.time["freq"]
            ).asi8
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
        icl = self.input_chunk_length
        on_graphs, on_vision = self._on_devices(series)
        windows = on_graphs.unfold(0, icl, stride).transpose(1, 2)  # [W, T, N], a view
        vision_windows = on_vision.unfold(0, icl, stride).transpose(1, 2)
        return self._forecast_windows(windows, vision_windows, parameters)

    def _on_devices(self, values: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Validated raw float32 values ``[..., N]``, scaled, on the graph device and on the
        vision device (the same tensor unless the placement is split)."""
        scaled = torch.from_numpy(values)
        if self._in_mean is not None:  # on the host, so both halves see the same scaled values
            scaled = (scaled - self._in_mean) / self._in_scale
        on_graphs = scaled.to(self._graph_device)
        return on_graphs, scaled.to(self.device) if self.placement.split else on_graphs

    def _forecast_windows(
        self,
        windows: torch.Tensor,
        vision_windows: torch.Tensor,
        parameters: bool,
        batch_size: int | None = None,
    ) -> np.ndarray:
        """Forecasts after scaled windows ``[W, T, N]`` (on the graph device, and on the vision
        device), ``batch_size`` (default :attr:`batch_size`) per :meth:`_run_batch`; shared by
        :meth:`_forecast_series` and :class:`~timesclip_export.service.stream_pool.StreamPool`."""
        batch_size = batch_size or self.batch_size
        n_windows = windows.shape[0]
        out = torch.empty(
            (n_windows, self.output_chunk_length, len(self.targets), self.n_parameters),
            device=self._graph_device,
        )
        with torch.inference_mode():
            for start in range(0, n_windows, batch_size):
                stop = min(start + batch_size, n_windows)
                out[start:stop] = self._run_batch(windows[start:stop], vision_windows[start:stop])
            if self._out_scale is not None:
                out = out * self._out_scale + self._out_shift
        result = out.cpu().numpy()
        return result if parameters else result[..., self._point_index]

    def _run_batch(self, windows: torch.Tensor, vision_windows: torch.Tensor) -> torch.Tensor:
        """Scaled windows ``[B, T, N]`` (on the graph device, and on the vision device) ->
        forecasts ``[B, H, N_t, P]`` (the shared buffer, on the graph device).

        A batch of one goes through the ONNX graphs as two copies of its window: their CPU
        kernels reduce a batch of one in another order than larger batches (last bits differ;
        the ViT does not), and with this a window's forecast on CPU is the same whatever batch
        it is in, so :meth:`update` row by row, :meth:`rolling` and a
        ``StreamPool`` agree exactly. It costs ~10 % on a single
        window (tiny preset, CPU): half as much as running the copy through the ViT too."""
        n = windows.shape[0]
        if n == 1:
            windows, vision_windows = windows.expand(2, -1, -1), vision_windows.expand(2, -1, -1)
        buffers = self._buffers_for(windows.shape[0])
        buffers.vision_x.copy_(vision_windows)
        if buffers.x is not buffers.vision_x:
            buffers.x.copy_(windows)
        for start in range(0, n, self.vision_batch):
            stop = min(start + self.vision_batch, n)
            buffers.vision_features[start:stop] = self._vision(buffers.vision_x[start:stop])
        if n == 1:
            buffers.vision_features[1] = buffers.vision_features[0]
        # Mixed: the ViT's CUDA kernels are queued; the text graph runs on the host meanwhile.
        self._text.run_with_iobinding(buffers.text_binding)
        if buffers.features is not buffers.vision_features:
            buffers.features.copy_(buffers.vision_features)  # device -> host, waits for the GPU
        self._fusion.run_with_iobinding(buffers.fusion_binding)
        return buffers.forecast[:n]

    def _buffers_for(self, batch: int) -> _Buffers:
        if batch in self._buffers:
            self._buffers.move_to_end(batch)
            return self._buffers[batch]

        # Host buffers that receive copies from CUDA are page-locked (faster, truly async).
        pin = self.placement.split and self.device.type == "cuda"

        def empty(*shape: int, device: torch.device = self._graph_device) -> torch.Tensor:
            pinned = pin and device.type == "cpu"
            return torch.empty(shape, dtype=torch.float32, device=device, pin_memory=pinned)

        x_shape = (batch, self.input_chunk_length, len(self.inputs))
        features_shape = (batch, len(self.inputs), self.manifest["model"]["vision_feature_dim"])
        x = empty(*x_shape)
        text = {name: empty(batch, *shape) for name, shape in self._shapes.items()}
        features = empty(*features_shape)
        forecast = empty(batch, self.output_chunk_length, len(self.targets), self.n_parameters)
        if self.placement.split:
            vision_x = empty(*x_shape, device=self.device)
            vision_features = empty(*features_shape, device=self.device)
        else:
            vision_x, vision_features = x, features
        text_binding = self._bind(self._text, {"x": x}, text)
        fusion_inputs = {"vision_features": features, **text}
        fusion_binding = self._bind(self._fusion, fusion_inputs, {"forecast": forecast})
        buffers = _Buffers(
            x, text, features, forecast, text_binding, fusion_binding, vision_x, vision_features
        )
        self._buffers[batch] = buffers
        if len(self._buffers) > _CACHED_BATCH_SIZES:
            self._buffers.popitem(last=False)
        return buffers

    def _bind(
        self,
        session: ort.InferenceSession,
        inputs: dict[str, torch.Tensor],
        outputs: dict[str, torch.Tensor],
    ) -> Any:
        binding = session.io_binding()
        device, device_id = self.placement.ort_device, self.placement.device_id
        for name, tensor in inputs.items():
            binding.bind_input(
                name,
                device,
                device_id,
                np.float32,
                tuple(tensor.shape),
                tensor.data_ptr(),
            )
        for name, tensor in outputs.items():
            binding.bind_output(
                name,
                device,
                device_id,
                np.float32,
                tuple(tensor.shape),
                tensor.data_ptr(),
            )
        return binding

    def _session(self, path: Path) -> ort.InferenceSession:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        # ORT's worker threads spin after each run by default; torch runs the vision path right
        # after, on the same cores, and would compete with them. Let them sleep instead.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if self.onnx_threads:
            options.intra_op_num_threads = self.onnx_threads
        stream = None
        if self.placement.ort_device == "cuda":
            stream = torch.cuda.current_stream(self._graph_device).cuda_stream
        return open_session(path, options, self.placement, stream, ort.InferenceSession)

    def _set_scaler(self, scaler: dict | None, kinds: list[str]) -> None:
        """Per-input shift/scale (identity for unscaled columns) and per-target output maps."""
        self._in_mean = self._in_scale = self._out_scale = self._out_shift = None
        if not scaler:
            return
        scaling = StandardScaling.from_payload(scaler)

        def tensor(values: Any, device: torch.device = self._graph_device) -> torch.Tensor:
            return torch.as_tensor(values, dtype=torch.float32, device=device)

        # Inputs are scaled on the host (_on_devices); unscaled columns pass unchanged.
        in_mean, in_scale = scaling.params(self.inputs, unscaled_ok=True)
        self._in_mean, self._in_scale = torch.from_numpy(in_mean), torch.from_numpy(in_scale)
        out_mean, out_scale = (tensor(v) for v in scaling.params(self.targets, unscaled_ok=True))
        location = tensor([1.0 if kind == "location" else 0.0 for kind in kinds])
        self._out_scale = out_scale[:, None].expand(-1, len(kinds))  # [N_t, P]
        self._out_shift = out_mean[:, None] * location[None, :]


def _placement_for(requested: str) -> Placement:
    """:func:`choose_placement` with what this machine's torch and onnxruntime offer."""
    cuda = torch.cuda.is_available()
    return choose_placement(
        requested,
        cuda,
        ort.get_available_providers(),
        current_device=torch.cuda.current_device() if cuda else 0,
        device_count=torch.cuda.device_count() if cuda else 0,
    )


def _to_datetime64(values: Any) -> np.ndarray:
    """Timestamps (strings, datetimes, numpy or pandas) as ``datetime64[ns]``, tz-naive UTC."""
    tz = getattr(values, "tz", None)
    if tz is not None:  # a tz-aware pandas index
        values = values.tz_convert("UTC").tz_localize(None)
    return np.asarray(values, dtype="datetime64[ns]")


def _format_time(value: np.int64, time: dict) -> str:
    """A timestamp for messages: ``2016-07-01 03:00:00`` (sub-second digits only if any)."""
    if time.get("index") == "range":
        return str(int(value))
    unit = "s" if int(value) % 10**9 == 0 else "ns"
    return np.datetime_as_string(np.datetime64(int(value), "ns"), unit=unit).replace("T", " ")
