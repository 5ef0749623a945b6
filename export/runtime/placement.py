"""Where the runtime's pieces run: plain functions, so the decisions are tested without a GPU.

The runtime has two halves that can sit on different devices:

- the *vision* half in torch: windows cut from the series, the rasteriser, the ViT program;
- the *graphs* half in ONNX Runtime: the text and fusion graphs, fed through I/O binding.

:func:`choose_placement` picks both from what torch and onnxruntime offer. Torch with CUDA and an
onnxruntime without ``CUDAExecutionProvider`` (the common ``pip install onnxruntime`` case) gives
a **mixed** placement: the rasteriser and the ViT, most of the arithmetic, run on the GPU and the
graphs on ONNX Runtime's CPU provider, with the features copied to the host once per batch.
:func:`ort_providers_for` builds the provider list for a placement and :func:`verify_providers`
checks that ONNX Runtime started the provider that was asked for (it silently falls back to the
CPU when the CUDA provider fails to load).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from timesclip_export.errors import BundleError, DeviceError

CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"
_NO_TORCH_CUDA = "torch sees no CUDA device"
_NO_ORT_CUDA = f"onnxruntime has no {CUDA_PROVIDER} (install onnxruntime-gpu)"


@dataclass(frozen=True)
class Placement:
    """Devices of the two halves and why they were picked.

    ``vision_device`` and ``graph_device`` are torch device strings (``"cpu"``, ``"cuda:0"``);
    the graphs' buffers live on ``graph_device`` and ONNX Runtime runs there. ``split`` means
    the halves keep separate buffers and the runtime copies the windows and the features across
    once per batch: the mixed placement. Tests set ``split=True`` with both devices ``"cpu"`` to
    run that data flow without a GPU.
    """

    vision_device: str
    graph_device: str
    reason: str
    split: bool = False

    def __post_init__(self) -> None:
        if self.vision_device != self.graph_device and not self.split:
            raise ValueError(
                f"vision on {self.vision_device} and graphs on {self.graph_device} need split=True"
            )
        if self.graph_device.startswith("cuda") and self.vision_device != self.graph_device:
            raise ValueError("graphs on CUDA need the vision half on the same CUDA device")

    @property
    def mode(self) -> str:
        """``"cuda"``, ``"cpu"`` or ``"mixed"`` (separate vision and graph buffers)."""
        if self.split:
            return "mixed"
        return "cuda" if self.vision_device.startswith("cuda") else "cpu"

    @property
    def ort_device(self) -> str:
        """The device name ONNX Runtime's I/O binding takes: ``"cuda"`` or ``"cpu"``."""
        return "cuda" if self.graph_device.startswith("cuda") else "cpu"

    @property
    def device_id(self) -> int:
        """CUDA index of the graphs (of the vision half when only it is on CUDA); 0 on CPU."""
        for device in (self.graph_device, self.vision_device):
            if device.startswith("cuda:"):
                return int(device.split(":", 1)[1])
        return 0


def choose_placement(
    requested: str,
    torch_cuda_available: bool,
    ort_providers: Sequence[str],
    *,
    current_device: int = 0,
    device_count: int | None = None,
) -> Placement:
    """The placement for ``requested`` (``auto``, ``cpu``, ``cuda`` or ``cuda:N``) given whether
    torch sees CUDA and onnxruntime's available providers.

    - torch and onnxruntime with CUDA: everything on CUDA;
    - torch with CUDA, onnxruntime CPU-only: mixed (vision on CUDA, graphs on ORT's CPU);
    - torch without CUDA: CPU, whatever onnxruntime has (the rasteriser and ViT need torch's
      CUDA, and the graphs alone on the GPU would cost a copy per batch for little);
    - ``cuda`` without torch CUDA, an unknown name or a missing index: :class:`DeviceError`.
    """
    if not isinstance(requested, str):
        raise DeviceError(f"device must be a string, got {type(requested).__name__}")
    ort_cuda = CUDA_PROVIDER in ort_providers
    if requested == "cpu":
        return Placement("cpu", "cpu", "CPU requested")
    if requested == "auto":
        if not torch_cuda_available:
            why = f"CUDA not used: {_NO_TORCH_CUDA}"
            if ort_cuda:
                why += f" (onnxruntime has {CUDA_PROVIDER}; the rasteriser and ViT need torch's)"
            return Placement("cpu", "cpu", why)
        index, how = current_device, "CUDA available"
    else:
        match = re.fullmatch(r"cuda(?::(\d+))?", requested)
        if match is None:
            raise DeviceError(f"unknown device '{requested}'; use auto, cpu, cuda or cuda:N")
        if not torch_cuda_available:
            raise DeviceError(f"device '{requested}' requested but {_NO_TORCH_CUDA}")
        index = current_device if match.group(1) is None else int(match.group(1))
        if device_count is not None and index >= device_count:
            raise DeviceError(
                f"device '{requested}' requested but torch sees {device_count} CUDA device(s)"
            )
        how = "CUDA requested"
    device = f"cuda:{index}"
    if ort_cuda:
        return Placement(device, device, f"{how} in torch and onnxruntime")
    why = f"{how} in torch, but {_NO_ORT_CUDA}: rasteriser and ViT on CUDA, graphs on CPU"
    return Placement(device, "cpu", why, split=True)


def ort_providers_for(placement: Placement, stream: int | None = None) -> list[Any]:
    """ONNX Runtime's providers for the graphs of ``placement``. On CUDA, ``stream`` (torch's
    current stream handle) makes ORT run on torch's stream, so their kernels are ordered without
    host syncs, and TF32 matmuls are off as in torch's default (ORT's is on), so the graphs keep
    float32 parity with the Darts model."""
    if placement.ort_device != "cuda":
        return [CPU_PROVIDER]
    options: dict[str, str] = {"device_id": str(placement.device_id), "use_tf32": "0"}
    if stream is not None:
        options["user_compute_stream"] = str(stream)
    return [(CUDA_PROVIDER, options), CPU_PROVIDER]


def provider_name(provider: str | tuple[str, dict]) -> str:
    """``"CUDAExecutionProvider"`` from a name or a ``(name, options)`` pair."""
    return provider if isinstance(provider, str) else provider[0]


def verify_providers(
    session_providers: Sequence[str], wanted: Sequence[str | tuple[str, dict]], path: Path
) -> None:
    """Raise :class:`DeviceError` unless the session's first provider is the first one asked
    for. ONNX Runtime falls back to the CPU without an error when the CUDA provider cannot load
    (missing CUDA or cuDNN libraries); this makes that loud. Compares names, so ``wanted`` may
    hold ``(name, options)`` pairs as passed to ``InferenceSession``."""
    first = provider_name(wanted[0])
    if not session_providers or session_providers[0] != first:
        hint = "; check the CUDA/cuDNN libraries" if first == CUDA_PROVIDER else ""
        raise DeviceError(
            f"onnxruntime did not start {first} for {Path(path).name} "
            f"(got {list(session_providers)}){hint}"
        )


def open_session(
    model: Path | bytes,
    options: Any,
    placement: Placement,
    stream: int | None = None,
    factory: Callable[..., Any] | None = None,
    name: str | None = None,
) -> Any:
    """An ``InferenceSession`` for ``model`` (the graph's bytes, or its path) on ``placement``'s
    graph device, after checking the provider it started. The runtime passes the bytes it read
    and checked, so ONNX Runtime never opens the file itself; ``name`` names the graph in
    errors (a path's file name by default). ``factory`` replaces
    ``onnxruntime.InferenceSession`` (tests pass a fake)."""
    if factory is None:
        import onnxruntime

        factory = onnxruntime.InferenceSession
    if name is None:
        name = "graph" if isinstance(model, bytes) else Path(model).name
    providers = ort_providers_for(placement, stream)
    source = model if isinstance(model, bytes) else str(model)
    try:
        session = factory(source, options, providers=providers)
    except Exception as err:  # ORT raises its own types for unreadable graphs
        raise BundleError(f"onnxruntime cannot load {name}: {err}") from err
    verify_providers(session.get_providers(), providers, Path(name))
    return session
