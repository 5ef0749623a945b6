"""``--cpus-per-shard``: the threads a shard's torch, numba and ONNX Runtime pools run on,
checked on the shard's own loader without starting Ray."""

from __future__ import annotations

from pathlib import Path

import pytest
from timesclip_export.service.config import ServeConfig, local_cpus, shard_threads


@pytest.mark.parametrize(("cpus", "threads"), [(0, 1), (0.4, 1), (1, 1), (2, 2), (2.6, 3)])
def test_shard_threads_are_the_rounded_cpus_at_least_one(cpus: float, threads: int) -> None:
    assert shard_threads(ServeConfig(bundle="b", cpus_per_shard=cpus)) == threads


def test_the_default_splits_the_local_cores_between_shards() -> None:
    for shards in (1, 2, 64):
        options = ServeConfig(bundle="b", shards=shards)
        options.check()
        assert options.cpus_per_shard == max(1, local_cpus() // shards)
    joining = ServeConfig(bundle="b", address="auto")
    joining.check()
    assert joining.cpus_per_shard == 1


@pytest.mark.parametrize("cpus", [-1, -0.5, float("nan")])
def test_negative_cpus_per_shard_is_refused(cpus: float) -> None:
    with pytest.raises(ValueError, match="--cpus-per-shard must be 0 or more"):
        ServeConfig(bundle="b", cpus_per_shard=cpus).check()


@pytest.mark.parametrize("cpus", [2, 0])
def test_a_shards_forecaster_runs_on_its_threads(tiny_bundle: Path, cpus: float) -> None:
    """The loaded forecaster's ORT sessions, numba (in the loading thread) and torch (loaded
    by this test process) all run ``shard_threads`` threads; restored afterwards."""
    pytest.importorskip("ray.serve")
    import numba
    import torch
    from timesclip_export.service import shard

    options = ServeConfig(bundle=str(tiny_bundle), cpus_per_shard=cpus)
    options.check()
    expected = shard_threads(options)
    before = torch.get_num_threads(), numba.get_num_threads()
    try:
        forecaster = shard._load_forecaster(options)
        assert shard.thread_settings(forecaster) == {
            "torch": expected,
            "numba": expected,
            "onnxruntime": expected,
        }
        sessions = forecaster._engine._sessions
        assert {s.get_session_options().intra_op_num_threads for s in sessions.values()} == {
            expected
        }
    finally:
        torch.set_num_threads(before[0])
        numba.set_num_threads(before[1])
