"""Distributed training (Lightning DDP, 2 CPU processes over gloo) and resuming from Darts'
checkpoints."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from darts import TimeSeries
from darts.metrics import mse

from tests.conftest import DATA_DIR, etth1_series
from timesclip_darts import TimesCLIPModel
from timesclip_darts.alignment import info_nce

pytestmark = pytest.mark.integration  # two-process DDP fleets

SINGLE_PROCESS = {"accelerator": "cpu", "devices": 1, "enable_progress_bar": False}


def _rank_loss(
    rank: int, init_file: str, vision: torch.Tensor, language: torch.Tensor, out_dir: str
) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    rows = slice(rank * 6, (rank + 1) * 6)
    v = vision[rows].clone().requires_grad_(True)
    t = language[rows].clone().requires_grad_(True)
    loss = info_nce(v, t, 0.1)
    loss.backward()
    torch.save({"loss": loss.detach(), "v": v.grad, "t": t.grad}, f"{out_dir}/rank{rank}.pt")
    dist.destroy_process_group()


def test_info_nce_negatives_span_all_processes(tmp_path: Path) -> None:
    """Two processes holding half the batch each: their mean loss is the single-process loss,
    and the gradients (summed back through the gather, as DDP then averages) match too."""
    torch.manual_seed(0)
    vision, language = torch.randn(12, 8), torch.randn(12, 8)
    store = tmp_path / "rendezvous"  # gloo's file store creates and removes it
    mp.spawn(_rank_loss, args=(str(store), vision, language, str(tmp_path)), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    v, t = vision.clone().requires_grad_(True), language.clone().requires_grad_(True)
    single = info_nce(v, t, 0.1)
    single.backward()
    torch.testing.assert_close((ranks[0]["loss"] + ranks[1]["loss"]) / 2, single.detach())
    torch.testing.assert_close(torch.cat([r["v"] for r in ranks]) / 2, v.grad)
    torch.testing.assert_close(torch.cat([r["t"] for r in ranks]) / 2, t.grad)


TRAIN_SCRIPT = """
import sys
import numpy as np, pandas as pd
from darts import TimeSeries
from timesclip_darts import TimesCLIPModel

csv, out, mode = sys.argv[1], sys.argv[2], sys.argv[3]
frame = pd.read_csv(csv, parse_dates=["date"]).iloc[:400]
series = TimeSeries.from_dataframe(frame, time_col="date").astype(np.float32)
ddp = mode == "ddp"
trainer = {"enable_progress_bar": False, "enable_model_summary": False, "accelerator": "cpu"}
if ddp:
    trainer.update(strategy="ddp", devices=2)
# The global batch is 32 either way: 2 processes x 16, or 1 x 32.
model = TimesCLIPModel(48, 12, clip_model_name="tiny", d_model=32, n_heads=4, dropout=0.0,
                       n_epochs=2, batch_size=16 if ddp else 32, random_state=0,
                       pl_trainer_kwargs=trainer)
model.fit(series, max_samples_per_ts=320)
model.save(out)  # on every rank: Lightning's checkpointing is collective
# Rank 0 alone reports, in one write: both ranks share stdout, and two processes printing at
# once interleave their lines.
if model.trainer.is_global_zero:
    hits = model.model.core.vision.cache.hits  # rank 0's own cache
    print(f"world size {model.trainer.world_size}\\ncache hits {hits}", flush=True)
"""


def _held_out_mse(path: Path, series: TimeSeries) -> float:
    model = TimesCLIPModel.load(str(path), pl_trainer_kwargs=SINGLE_PROCESS)
    forecasts = model.historical_forecasts(
        series, forecast_horizon=12, stride=4, retrain=False, last_points_only=False, verbose=False
    )
    return float(model.backtest(series, historical_forecasts=forecasts, metric=mse))


def test_ddp_training_on_two_cpu_processes_matches_single_process(tmp_path: Path) -> None:
    script = tmp_path / "train.py"  # Lightning's DDP launcher re-runs a script file
    script.write_text(TRAIN_SCRIPT)
    csv = str(DATA_DIR / "ETTh1.csv")
    for mode in ("ddp", "single"):
        result = subprocess.run(
            [sys.executable, str(script), csv, str(tmp_path / f"{mode}.pt"), mode],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        assert f"world size {2 if mode == 'ddp' else 1}" in result.stdout
        hits = int(result.stdout.split("cache hits")[1].split()[0])
        assert hits > 0  # epoch 2 read the frozen-ViT features from each process's cache
    held_out = etth1_series(352, 700)
    ddp, single = (_held_out_mse(tmp_path / f"{m}.pt", held_out) for m in ("ddp", "single"))
    # Lightning shuffles DDP's sampler its own way, so the runs see batches in another order;
    # on held-out data they must still be as good as each other.
    assert ddp == pytest.approx(single, rel=0.05), (ddp, single)


CRASH_SCRIPT = """
import os, sys
import numpy as np, pandas as pd
from darts import TimeSeries
from timesclip_darts import TimesCLIPModel
from timesclip_darts.darts_model import _TimesCLIPModule

def crash_at_second_epoch(self):
    if self.current_epoch == 1:
        os._exit(3)  # a hard crash after epoch 1 was checkpointed: no clean-up at all
_TimesCLIPModule.on_train_epoch_start = crash_at_second_epoch

frame = pd.read_csv(sys.argv[1], parse_dates=["date"]).iloc[:400]
series = TimeSeries.from_dataframe(frame, time_col="date").astype(np.float32)
model = TimesCLIPModel(48, 12, clip_model_name="tiny", d_model=32, n_heads=4, dropout=0.0,
                       n_epochs=2, random_state=0, save_checkpoints=True, work_dir=sys.argv[2],
                       model_name="resumable", force_reset=True,
                       pl_trainer_kwargs={"enable_progress_bar": False})
model.fit(series, dataloader_kwargs={"shuffle": False})
"""


def test_interrupted_training_resumes_to_the_uninterrupted_result(tmp_path: Path) -> None:
    csv = DATA_DIR / "ETTh1.csv"
    crashed = subprocess.run(
        [sys.executable, "-c", CRASH_SCRIPT, str(csv), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert crashed.returncode == 3, crashed.stderr[-3000:]
    series = etth1_series(0, 400)
    checkpoints = tmp_path / "resumable" / "checkpoints"
    assert [p.name for p in checkpoints.iterdir()] == ["last-epoch=0.ckpt"]  # died in epoch 2
    resumed = TimesCLIPModel.load_from_checkpoint("resumable", work_dir=str(tmp_path), best=False)
    resumed.fit(series, dataloader_kwargs={"shuffle": False})
    assert resumed.model.current_epoch == 2  # it ran epoch 2 only, not two more
    uninterrupted = TimesCLIPModel(
        48,
        12,
        clip_model_name="tiny",
        d_model=32,
        n_heads=4,
        dropout=0.0,
        n_epochs=2,
        random_state=0,
        pl_trainer_kwargs={"enable_progress_bar": False},
    )
    uninterrupted.fit(series, dataloader_kwargs={"shuffle": False})
    np.testing.assert_allclose(
        resumed.predict(12).values(), uninterrupted.predict(12).values(), rtol=0, atol=1e-5
    )
