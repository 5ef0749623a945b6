"""Device placement of the runtime without a GPU: which devices `auto`/`cpu`/`cuda` pick from
what torch and onnxruntime offer, the providers asked of ONNX Runtime and the check of what it
started (fake sessions), and the mixed placement's data flow (separate vision and graph buffers,
copies between them) run on the CPU against the plain CPU path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from timesclip_export.errors import BundleError, DeviceError
from timesclip_export.runtime.forecaster import RollingForecaster
from timesclip_export.runtime.placement import (
    CPU_PROVIDER,
    CUDA_PROVIDER,
    Placement,
    choose_placement,
    open_session,
    ort_providers_for,
    verify_providers,
)

ORT_CPU = ["AzureExecutionProvider", CPU_PROVIDER]
ORT_CUDA = [CUDA_PROVIDER, CPU_PROVIDER]


# ------------------------------------------------------------------------------ choosing
@pytest.mark.parametrize(
    ("requested", "torch_cuda", "ort", "devices", "mode", "reason"),
    [
        ("auto", True, ORT_CUDA, ("cuda:0", "cuda:0"), "cuda", "CUDA available in torch and"),
        ("auto", True, ORT_CPU, ("cuda:0", "cpu"), "mixed", "onnxruntime has no CUDAExecution"),
        ("auto", False, ORT_CUDA, ("cpu", "cpu"), "cpu", "the rasteriser and ViT need torch's"),
        ("auto", False, ORT_CPU, ("cpu", "cpu"), "cpu", "CUDA not used: torch sees no CUDA"),
        ("cpu", True, ORT_CUDA, ("cpu", "cpu"), "cpu", "CPU requested"),
        ("cuda", True, ORT_CUDA, ("cuda:0", "cuda:0"), "cuda", "CUDA requested"),
        ("cuda:1", True, ORT_CUDA, ("cuda:1", "cuda:1"), "cuda", "CUDA requested"),
        ("cuda:1", True, ORT_CPU, ("cuda:1", "cpu"), "mixed", "graphs on CPU"),
    ],
)
def test_placement_follows_what_torch_and_onnxruntime_offer(
    requested, torch_cuda, ort, devices, mode, reason
) -> None:
    placement = choose_placement(requested, torch_cuda, ort, device_count=2)
    assert (placement.vision_device, placement.graph_device) == devices
    assert placement.mode == mode and reason in placement.reason
    assert placement.split == (mode == "mixed")


def test_auto_uses_torchs_current_cuda_device() -> None:
    placement = choose_placement("auto", True, ORT_CUDA, current_device=3, device_count=4)
    assert placement.vision_device == "cuda:3" and placement.device_id == 3


@pytest.mark.parametrize(
    ("requested", "torch_cuda", "message"),
    [
        ("cuda", False, "device 'cuda' requested but torch sees no CUDA device"),
        ("cuda:0", False, "torch sees no CUDA device"),
        ("cuda:2", True, r"torch sees 2 CUDA device\(s\)"),
        ("gpu", True, "unknown device 'gpu'"),
        ("cuda:x", True, "unknown device"),
    ],
)
def test_impossible_devices_are_refused(requested, torch_cuda, message) -> None:
    with pytest.raises(DeviceError, match=message):
        choose_placement(requested, torch_cuda, ORT_CUDA, device_count=2)


def test_a_placement_cannot_split_without_saying_so() -> None:
    with pytest.raises(ValueError, match="need split=True"):
        Placement("cuda:0", "cpu", "x")
    with pytest.raises(ValueError, match="same CUDA device"):
        Placement("cpu", "cuda:0", "x", split=True)


# ------------------------------------------------------------------------------ providers
class FakeSession:
    """Stands in for ``onnxruntime.InferenceSession``: records what it was asked for and reports
    the providers a real one would have started."""

    def __init__(self, started: list[str]) -> None:
        self.started = started
        self.calls: list[tuple] = []

    def __call__(self, path: str, options, providers):
        self.calls.append((path, options, providers))
        return self

    def get_providers(self) -> list[str]:
        return self.started


def test_providers_for_cuda_run_on_torchs_stream_and_cpu_has_no_options() -> None:
    cuda = Placement("cuda:1", "cuda:1", "test")
    assert ort_providers_for(cuda, stream=1234) == [
        (CUDA_PROVIDER, {"device_id": "1", "use_tf32": "0", "user_compute_stream": "1234"}),
        CPU_PROVIDER,
    ]
    assert ort_providers_for(cuda)[0] == (CUDA_PROVIDER, {"device_id": "1", "use_tf32": "0"})
    mixed = Placement("cuda:0", "cpu", "test", split=True)  # graphs on ORT's CPU provider
    assert ort_providers_for(mixed, stream=1234) == [CPU_PROVIDER]


def test_a_cuda_session_that_started_cuda_is_accepted() -> None:
    """The bug: the runtime compared the session's first provider (a name) with the first
    provider it asked for (a ``(name, options)`` pair), so every CUDA session was refused."""
    placement = Placement("cuda:0", "cuda:0", "test")
    fake = FakeSession([CUDA_PROVIDER, CPU_PROVIDER])
    session = open_session(Path("text.onnx"), "options", placement, stream=77, factory=fake)
    assert session is fake
    _, _, asked = fake.calls[0]
    assert asked[0][0] == CUDA_PROVIDER and asked[0][1]["user_compute_stream"] == "77"
    assert session.get_providers()[0] != asked[0]  # what the old check compared: never equal
    verify_providers([CUDA_PROVIDER], [CUDA_PROVIDER], Path("a.onnx"))  # names work as well


def test_a_session_that_fell_back_to_the_cpu_is_refused() -> None:
    """ONNX Runtime falls back to the CPU without an error when its CUDA provider cannot load."""
    fake = FakeSession([CPU_PROVIDER])
    placement = Placement("cuda:0", "cuda:0", "test")
    with pytest.raises(DeviceError, match="did not start CUDAExecutionProvider for fusion.onnx"):
        open_session(Path("b/fusion.onnx"), None, placement, stream=1, factory=fake)
    cpu = Placement("cpu", "cpu", "test")
    assert open_session(Path("x.onnx"), None, cpu, factory=fake) is fake
    with pytest.raises(DeviceError, match="did not start CPUExecutionProvider"):
        open_session(Path("x.onnx"), None, cpu, factory=FakeSession([]))


def test_an_unreadable_graph_is_a_bundle_error() -> None:
    def broken(path, options, providers):
        raise RuntimeError("[ONNXRuntimeError] : 7 : INVALID_PROTOBUF")

    with pytest.raises(BundleError, match="onnxruntime cannot load t.onnx: .*INVALID_PROTOBUF"):
        open_session(Path("t.onnx"), None, Placement("cpu", "cpu", "t"), factory=broken)
    with pytest.raises(BundleError, match="onnxruntime cannot load text.onnx: .*INVALID"):
        open_session(b"\0", None, Placement("cpu", "cpu", "t"), factory=broken, name="text.onnx")


def test_a_session_is_opened_from_the_bytes_given() -> None:
    """The runtime hands ONNX Runtime the bytes it checked, never the path to open again."""
    fake = FakeSession([CPU_PROVIDER])
    cpu = Placement("cpu", "cpu", "test")
    assert open_session(b"graph bytes", None, cpu, factory=fake, name="text.onnx") is fake
    assert fake.calls[0][0] == b"graph bytes"
    with pytest.raises(DeviceError, match="did not start CUDAExecutionProvider for fusion.onnx"):
        cuda = Placement("cuda:0", "cuda:0", "test")
        open_session(b"graph bytes", None, cuda, stream=1, factory=fake, name="fusion.onnx")


# ------------------------------------------------------------------------------ mixed data flow
def test_mixed_data_flow_gives_the_cpu_forecasts(tiny_bundle: Path, etth1_splits) -> None:
    """The mixed placement's path (vision buffers apart from the graphs', windows and features
    copied across per batch) forced onto the CPU: the same forecasts as the plain CPU path, for
    full and partial batches, scaled and raw inputs, and streaming."""
    values = etth1_splits.test.values()[:250].astype(np.float32)
    split = Placement("cpu", "cpu", "forced for a test", split=True)
    for apply_scaler in (False, True):
        plain = RollingForecaster(
            tiny_bundle, vision="torch", batch_size=64, apply_scaler=apply_scaler
        )
        mixed = RollingForecaster(
            tiny_bundle, device=split, batch_size=64, apply_scaler=apply_scaler
        )
        expected = plain.rolling(values)
        out = mixed.rolling(values)  # 155 windows: two full batches of 64 and one of 27
        np.testing.assert_allclose(out, expected, rtol=0, atol=1e-6)
        buffers = mixed._engine._buffers[64]
        assert buffers.vision_x is not buffers.x and buffers.vision_features is not buffers.features
        same = plain._engine._buffers[64]
        assert same.vision_x is same.x and same.vision_features is same.features
    streamed = np.concatenate([mixed.update(values[i : i + 50]) for i in range(0, 250, 50)])
    np.testing.assert_allclose(streamed, expected, rtol=0, atol=1e-6)
    description = mixed.describe()
    assert description.startswith("mixed: rasteriser and ViT in torch on cpu, ONNX graphs in ")
    assert "CPUExecutionProvider" in description and "(forced for a test)" in description
