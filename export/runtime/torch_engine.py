"""The torch vision path: scaled windows -> forecasts with ``vision.pt2`` in torch and the text and
fusion graphs in ONNX Runtime, fed through I/O binding.

Per batch of windows, the vision program (torch) and the two ONNX graphs read and write
preallocated torch tensors. Where both run on one device (``cpu`` or ``cuda``), everything stays
there: the windows are cut from the series on the device (one host-to-device copy per call) and
only the final forecasts come back to the host; on CUDA, ONNX Runtime runs on torch's current
stream (``user_compute_stream``), so the two libraries' kernels are ordered without host syncs.
Where torch has CUDA and onnxruntime only its CPU provider, the placement is **mixed**
(:mod:`timesclip_export.runtime.placement`): the rasteriser and the ViT run on CUDA into device
buffers, the text graph runs on host windows meanwhile, and the features are copied to the host
once per batch for the fusion graph.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from timesclip_export.bundle.format import VISION_FILE, load_vision_program
from timesclip_export.runtime.engine import Engine, session_options
from timesclip_export.runtime.placement import Placement, choose_placement, open_session
from timesclip_export.runtime.vision import window_vision

# The ViT's autocast dtype per ``vision_dtype`` name (float32: no autocast).
_AUTOCAST: dict[str, torch.dtype] = {"float16": torch.float16, "bfloat16": torch.bfloat16}
_CACHED_BATCH_SIZES = 4


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


class TorchEngine(Engine):
    """The torch vision path's :class:`~timesclip_export.runtime.engine.Engine`: the text and
    fusion graphs and ``vision.pt2``, opened from ``contents`` (file name -> the bytes the
    forecaster read and checked)."""

    vision = "torch"

    def __init__(
        self,
        contents: Mapping[str, bytes],
        manifest: dict,
        graph_files: dict[str, str],
        device: str | Placement,
        *,
        vision_batch: int | None,
        vision_dtype: str,
        compile_vision: bool,
        onnx_threads: int | None,
    ) -> None:
        spec = manifest["model"]
        placement = device if isinstance(device, Placement) else placement_for(device)
        super().__init__(manifest, placement, vision_batch, onnx_threads)
        self.device = torch.device(placement.vision_device)  # windows, rasteriser, ViT
        self._graph_device = torch.device(placement.graph_device)
        self.vision_dtype = vision_dtype
        self.compile_vision = compile_vision
        self._text = self._session(contents, graph_files["text"])
        self._fusion = self._session(contents, graph_files["fusion"])
        program = load_vision_program(contents[VISION_FILE], str(self.device))
        if compile_vision:
            program = torch.compile(program, dynamic=True)
        self._vision = window_vision(program, spec, _AUTOCAST.get(vision_dtype))
        self._feature_dim = spec["vision_feature_dim"]
        n_inputs = self._n_inputs
        self._shapes = {
            "cls": (n_inputs, spec["d_model"]),
            "patch_tokens": (n_inputs, spec["n_patches"], spec["d_model"]),
            "variate_tokens": (n_inputs, spec["d_model"]),
            "mean": (1, n_inputs),
            "std": (1, n_inputs),
        }
        self._buffers: OrderedDict[int, _Buffers] = OrderedDict()

    def describe(self) -> str:
        """Where this runs, in words."""
        provider = self._text.get_providers()[0]
        gpu = f" ({torch.cuda.get_device_name(self.device)})" if self.device.type == "cuda" else ""
        compiled = ", compiled" if self.compile_vision else ""
        if self.placement.mode == "mixed":
            where = (
                f"mixed: rasteriser and ViT in torch on {self.device}{gpu}, ONNX graphs in "
                f"onnxruntime {provider} on {self._graph_device}, features copied once per batch"
            )
        else:
            where = (
                f"{self.placement.mode.upper()}{gpu}: vision in torch on {self.device}, "
                f"onnxruntime {provider}"
            )
        return f"{where} ({self.placement.reason}); vision in {self.vision_dtype}{compiled}"

    def forecast(self, values: np.ndarray, stride: int | None, batch_size: int) -> np.ndarray:
        """Forecasts after scaled windows ``[W, T, N]`` (``stride`` None) or after every
        ``stride``-th full window of a scaled series ``[rows, N]``."""
        source = torch.from_numpy(values)
        on_graphs = source.to(self._graph_device)
        on_vision = source.to(self.device) if self.placement.split else on_graphs
        if stride is not None:  # cut on the device: one host-to-device copy of the series
            on_graphs = on_graphs.unfold(0, self._icl, stride).transpose(1, 2)  # a view
            on_vision = on_vision.unfold(0, self._icl, stride).transpose(1, 2)
        n_windows = on_graphs.shape[0]
        out = torch.empty((n_windows, *self._out_shape), device=self._graph_device)
        with torch.inference_mode():
            for start in range(0, n_windows, batch_size):
                stop = min(start + batch_size, n_windows)
                out[start:stop] = self._run_batch(on_graphs[start:stop], on_vision[start:stop])
        return out.cpu().numpy()

    def _run_batch(self, windows: torch.Tensor, vision_windows: torch.Tensor) -> torch.Tensor:
        """Scaled windows ``[B, T, N]`` (on the graph device, and on the vision device) ->
        forecasts ``[B, H, N_t, P]`` (the shared buffer, on the graph device).

        A batch of one goes through the ONNX graphs as two copies of its window: their CPU
        kernels reduce a batch of one in another order than larger batches (last bits differ;
        the ViT does not), and with this a window's forecast on CPU is the same whatever batch
        it is in, so :meth:`RollingForecaster.update` row by row, :meth:`RollingForecaster.rolling`
        and a ``StreamPool`` agree exactly. It costs ~10 % on a single window (tiny preset, CPU):
        half as much as running the copy through the ViT too."""
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

        x_shape = (batch, self._icl, self._n_inputs)
        features_shape = (batch, self._n_inputs, self._feature_dim)
        x = empty(*x_shape)
        text = {name: empty(batch, *shape) for name, shape in self._shapes.items()}
        features = empty(*features_shape)
        forecast = empty(batch, *self._out_shape)
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
                name, device, device_id, np.float32, tuple(tensor.shape), tensor.data_ptr()
            )
        for name, tensor in outputs.items():
            binding.bind_output(
                name, device, device_id, np.float32, tuple(tensor.shape), tensor.data_ptr()
            )
        return binding

    def _session(self, contents: Mapping[str, bytes], name: str) -> ort.InferenceSession:
        stream = None
        if self.placement.ort_device == "cuda":
            stream = torch.cuda.current_stream(self._graph_device).cuda_stream
        options = session_options(self.onnx_threads)
        return open_session(
            contents[name], options, self.placement, stream, ort.InferenceSession, name=name
        )


def placement_for(requested: str) -> Placement:
    """:func:`choose_placement` with what this machine's torch and onnxruntime offer."""
    cuda = torch.cuda.is_available()
    return choose_placement(
        requested,
        cuda,
        ort.get_available_providers(),
        current_device=torch.cuda.current_device() if cuda else 0,
        device_count=torch.cuda.device_count() if cuda else 0,
    )
