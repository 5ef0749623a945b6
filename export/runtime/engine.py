"""What both runtime engines share (:mod:`.onnx_engine`, :mod:`.torch_engine`): the shapes read
from the manifest, the ViT's batch per call, and ONNX Runtime's session options. No torch."""

from __future__ import annotations

from typing import Any

from timesclip_export.runtime.placement import Placement

# Pixels per vision call (images x S²). On CPU, slices of ~2^19 pixels keep the ViT's activations
# cache-friendly: measured with the numba rasteriser (1 thread), 64-128 windows per call are
# fastest for the tiny preset and ~16 for the small one, and whole batches of 256 windows 5-45 %
# slower. On CUDA the dense torch rasteriser's temporaries are ~20 floats per pixel: 2^24 pixels
# (~1.3 GB) keep the GPU busy while bounding memory at 224 px.
VISION_PIXELS = {"cpu": 1 << 19, "cuda": 1 << 24}


def session_options(threads: int | None) -> Any:
    """ONNX Runtime session options shared by both vision paths."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    # ORT's worker threads spin after each run by default; the rasteriser (and torch's ViT on
    # the torch path) runs right after, on the same cores, and would compete with them.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        options.intra_op_num_threads = threads
    return options


class Engine:
    """Scaled windows -> forecasts in the model's scaled units, ``[W, H, N_t, P]``; the
    :class:`~timesclip_export.runtime.forecaster.RollingForecaster` around an engine checks
    inputs, scales and keeps stream state. Subclasses open their sessions and programs and
    implement ``forecast(values, stride, batch_size)`` and ``describe()``."""

    vision: str

    def __init__(
        self,
        manifest: dict,
        placement: Placement,
        vision_batch: int | None,
        onnx_threads: int | None,
    ) -> None:
        spec = manifest["model"]
        self.placement = placement
        self.onnx_threads = onnx_threads
        self._icl: int = spec["input_chunk_length"]
        self._n_inputs = len(spec["inputs"])
        self._out_shape = (
            spec["output_chunk_length"],
            spec["n_targets"],
            len(spec["likelihood"]["parameters"]),
        )
        pixels = spec["image_size"] ** 2 * self._n_inputs
        budget = VISION_PIXELS[placement.vision_device.split(":")[0]]
        self.vision_batch: int = vision_batch or max(1, budget // pixels)
