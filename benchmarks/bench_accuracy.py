"""Accuracy on the standard ETT protocol: TimesCLIP against Darts' own models, with ablations.

    python benchmarks/bench_accuracy.py           # the full table (about 22 minutes, 2 cores)
    python benchmarks/bench_accuracy.py --smoke   # what CI runs: tiny budget, ETTh1, seconds

Protocol (as the long-term forecasting literature, ``../shared/data/ETT/README.md``): all 7
variates in and out, input 96, horizon 96, the standard 12/4/4-month split, a StandardScaler
fitted on train, MSE and MAE on scaled values over every stride-1 test window, forecast with
Darts' ``historical_forecasts(retrain=False, last_points_only=False)``.

Budget, the same for every trained row: at most ``--epochs`` epochs over the most recent
``--train-windows`` training windows (Darts' ``max_samples_per_ts``), batch 32, early stopping
on the forecasting loss of the last ``--val-windows`` validation windows (patience
``--patience``), then the test run on the epoch with the lowest validation loss; one CPU
thread per model (``--jobs`` models run side by side). Wall times are reported per row. Every
row runs with every seed in ``--seeds``; the table gives mean and spread (half the range over
seeds). Writes JSON and plots (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
INPUT, HORIZON = 96, 96
NAIVE = "repeat last value"
CHECKPOINT_NAME = "row"
TIMESCLIP = "TimesCLIP"
ABLATIONS = {  # row name -> TimesCLIPModel switches
    "TimesCLIP, no vision": dict(use_vision=False),
    "TimesCLIP, no alignment loss": dict(lambda_align=0.0),
    "TimesCLIP, no variate selection": dict(use_variate_selection=False),
    "TimesCLIP, trainable ViT": dict(freeze_vision=False),
}
BASELINES = ("DLinear", "NLinear", "TiDE", "TSMixer", "NHiTS", NAIVE)
# Published figures for the same setting (input 96, horizon 96); never mixed with measured rows.
PUBLISHED = [
    ("ETTm1", "TimesCLIP (paper: pretrained ViT-B/16, GPU)", 0.319, 0.358),
    ("ETTm1", "iTransformer (paper)", 0.334, 0.368),
    ("ETTm1", "PatchTST (paper)", 0.329, 0.367),
    ("ETTm1", "DLinear (paper)", 0.345, 0.372),
    ("ETTh1", "DLinear (literature)", 0.386, 0.400),
    ("ETTh1", "iTransformer (literature)", 0.386, 0.405),
    ("ETTh1", "PatchTST (literature)", 0.414, 0.419),
]


@dataclass(frozen=True)
class Budget:
    epochs: int = 8
    train_windows: int = 2000
    val_windows: int = 512
    patience: int = 2
    batch_size: int = 32
    preset: str = "small"
    d_model: int = 128
    n_heads: int = 4
    test_windows: int | None = None  # None: the whole test split


@dataclass
class Result:
    dataset: str
    seed: int
    model: str
    mse: float
    mae: float
    train_s: float
    epochs_run: int
    best_epoch: int  # the epoch (1-based) whose weights were tested: lowest validation loss
    test_s: float
    test_windows: int
    forecasts_per_s: float
    trainable_parameters: int
    examples: dict  # window index -> forecast values, for plots (first seed only)
    attention: list | None = None  # TimesCLIP's selection attention of the first test window


@lru_cache(maxsize=2)
def _splits(dataset: str, data_dir: str | None):
    from timesclip_darts.data import ett_splits, load_darts_dataset

    return ett_splits(load_darts_dataset(dataset, data_dir), dataset, INPUT)


def _test_split(dataset: str, data_dir: str | None, budget: Budget):
    test = _splits(dataset, data_dir).test
    if budget.test_windows is not None:
        test = test[: INPUT + HORIZON + budget.test_windows - 1]
    return test


def build_model(name: str, seed: int, budget: Budget, work_dir: str):
    """A fresh model of row ``name`` with the shared budget; Darts keeps its best checkpoint by
    validation loss in ``work_dir``."""
    import torch
    from darts.models import (
        DLinearModel,
        GlobalNaiveSeasonal,
        NHiTSModel,
        NLinearModel,
        TiDEModel,
        TSMixerModel,
    )
    from pytorch_lightning.callbacks import EarlyStopping

    from timesclip_darts import TimesCLIPModel

    if name == NAIVE:
        return GlobalNaiveSeasonal(input_chunk_length=1, output_chunk_length=HORIZON)
    common = dict(
        n_epochs=budget.epochs,
        batch_size=budget.batch_size,
        random_state=seed,
        save_checkpoints=True,
        work_dir=work_dir,
        model_name=CHECKPOINT_NAME,
        force_reset=True,
        pl_trainer_kwargs={
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "callbacks": [EarlyStopping("val_loss", patience=budget.patience, mode="min")],
        },
    )
    if name == TIMESCLIP or name in ABLATIONS:
        return TimesCLIPModel(
            INPUT,
            HORIZON,
            clip_model_name=budget.preset,
            d_model=budget.d_model,
            n_heads=budget.n_heads,
            **ABLATIONS.get(name, {}),
            **common,
        )
    # Each baseline in its published multivariate long-term setting: the linear models shared
    # across channels (their paper's "individual=False") at DLinear's ETT learning rate, NLinear
    # with its last-value normalisation; the deep models with reversible instance norm, as
    # TimesCLIP normalises each window too. Darts' defaults otherwise.
    adam = {"optimizer_cls": torch.optim.Adam}
    if name == "DLinear":
        return DLinearModel(
            INPUT, HORIZON, shared_weights=True, optimizer_kwargs={"lr": 5e-3}, **common
        )
    if name == "NLinear":
        return NLinearModel(
            INPUT,
            HORIZON,
            shared_weights=True,
            normalize=True,
            optimizer_kwargs={"lr": 5e-3},
            **common,
        )
    deep = dict(use_reversible_instance_norm=True, optimizer_kwargs={"lr": 1e-3}, **adam)
    if name == "TiDE":
        return TiDEModel(INPUT, HORIZON, **deep, **common)
    if name == "TSMixer":
        return TSMixerModel(INPUT, HORIZON, **deep, **common)
    if name == "NHiTS":
        return NHiTSModel(INPUT, HORIZON, **deep, **common)
    raise ValueError(f"unknown row '{name}'")


def _best_epoch(work_dir: Path) -> int:
    """The 1-based epoch of Darts' best checkpoint (named ``best-epoch=<0-based>-...``)."""
    (path,) = (work_dir / CHECKPOINT_NAME / "checkpoints").glob("best-epoch=*")
    return int(path.name.split("=")[1].split("-")[0]) + 1


def run_row(
    dataset: str,
    seed: int,
    name: str,
    budget: Budget,
    data_dir: str | None,
    threads: int,
    keep_examples: bool,
) -> Result:
    """Train row ``name`` on ``dataset`` with ``seed`` and score it on the test split."""
    import torch

    from timesclip_darts.evaluation import score_on_test

    # Lightning resets torch's threads to the core count at fit unless OMP_NUM_THREADS is set.
    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)
    splits = _splits(dataset, data_dir)
    test = _test_split(dataset, data_dir, budget)
    val = splits.val[-(INPUT + HORIZON + budget.val_windows - 1) :]
    loader = {"pin_memory": torch.cuda.is_available()}
    epochs_run = best_epoch = 0
    with tempfile.TemporaryDirectory(prefix="bench-accuracy-") as work_dir:
        model = build_model(name, seed, budget, work_dir=work_dir)
        started = time.perf_counter()
        if name == NAIVE:
            model.fit(splits.train)
        else:
            model.fit(
                splits.train,
                val_series=val,
                max_samples_per_ts=budget.train_windows,
                dataloader_kwargs=loader,
            )
            epochs_run = int(model.epochs_trained)  # what early stopping let run
            # Test the epoch with the lowest validation loss, as the literature's early stopping
            # does, not the last one (which is `patience` epochs past it when it stopped early).
            best_epoch = _best_epoch(Path(work_dir))
            model = type(model).load_from_checkpoint(CHECKPOINT_NAME, work_dir=work_dir, best=True)
        train_s = time.perf_counter() - started
    score = score_on_test(model, test, INPUT, HORIZON, {"dataloader_kwargs": loader})
    network = getattr(model, "model", None)
    n_params = sum(p.numel() for p in network.parameters() if p.requires_grad) if network else 0
    n = len(score.forecasts)
    examples = (
        {i: score.forecasts[i].values().tolist() for i in (0, n // 2, n - 1)}
        if keep_examples
        else {}
    )
    attention = None
    if keep_examples and name == TIMESCLIP:
        core = model.core.eval()
        with torch.no_grad():
            window = torch.as_tensor(test[:INPUT].values(), dtype=torch.float32)[None]
            attention = core.forward_detailed(window).selection_attention[0].tolist()
    return Result(
        dataset,
        seed,
        name,
        score.mse,
        score.mae,
        train_s,
        epochs_run,
        best_epoch,
        score.seconds,
        n,
        score.forecasts_per_second,
        n_params,
        examples,
        attention,
    )


def summarise(results: list[Result]) -> dict[str, dict[str, dict[str, float]]]:
    """Mean and spread (half the range) over seeds, per dataset and row."""
    table: dict[str, dict[str, dict[str, float]]] = {}
    for r in results:
        table.setdefault(r.dataset, {}).setdefault(r.model, {})
    for dataset, rows in table.items():
        for model in rows:
            runs = [r for r in results if r.dataset == dataset and r.model == model]
            entry = {"seeds": len(runs)}
            for key in (
                "mse",
                "mae",
                "train_s",
                "test_s",
                "forecasts_per_s",
                "epochs_run",
                "best_epoch",
            ):
                values = np.array([getattr(r, key) for r in runs], dtype=float)
                entry[key] = float(values.mean())
                entry[f"{key}_spread"] = float((values.max() - values.min()) / 2)
            entry["trainable_parameters"] = runs[0].trainable_parameters
            rows[model] = entry
    return table


def _by_mse(rows: dict) -> list[tuple[str, dict]]:
    return sorted(rows.items(), key=lambda kv: kv[1]["mse"])


def rank_of(table: dict, dataset: str, model: str, rows: list[str]) -> int:
    ordered = sorted(rows, key=lambda m: table[dataset][m]["mse"])
    return ordered.index(model) + 1


def print_table(table: dict, comparison: list[str]) -> None:
    for dataset, rows in table.items():
        compared = [m for m in comparison if m in rows]
        print(f"\n{dataset}: input {INPUT} -> {HORIZON}, MSE/MAE (scaled) over all test windows")
        print(
            f"{'model':<34} {'MSE':>14} {'MAE':>14} {'epochs':>6} {'best':>5} "
            f"{'train s':>8} {'fc/s':>8}"
        )
        for model, e in _by_mse(rows):
            mark = "" if model in compared else "  (ablation)"
            print(
                f"{model:<34} {e['mse']:>7.4f}±{e['mse_spread']:.4f} "
                f"{e['mae']:>7.4f}±{e['mae_spread']:.4f} {e['epochs_run']:>6.1f} "
                f"{e['best_epoch']:>5.1f} {e['train_s']:>8.1f} {e['forecasts_per_s']:>8.0f}{mark}"
            )
        for name, value_mse, value_mae in [(n, a, b) for d, n, a, b in PUBLISHED if d == dataset]:
            print(f"{name:<34} {value_mse:>7.3f} (pub.) {value_mae:>7.3f} (pub.)")
        if TIMESCLIP in compared:
            rank = rank_of(table, dataset, TIMESCLIP, compared)
            print(f"TimesCLIP ranks {rank} of {len(compared)} measured rows on {dataset} by MSE")


def draw_plots(results: list[Result], table: dict, args, budget: Budget, out: Path) -> list[Path]:
    from darts import TimeSeries

    from timesclip_darts.plots import plot_forecasts, plot_metric_bars, plot_selection_attention

    bars = {
        d: {m: (e["mse"], e["mse_spread"]) for m, e in rows.items()} for d, rows in table.items()
    }
    paths = [plot_metric_bars(bars, "test MSE (scaled)", out / "mse_by_model.png")]
    for dataset in table:
        test = _test_split(dataset, args.data_dir, budget)
        firsts = [r for r in results if r.dataset == dataset and r.examples]
        if not firsts:
            continue
        for window in sorted(firsts[0].examples, key=int):
            start = int(window)
            index = test.time_index[start + INPUT : start + INPUT + HORIZON]
            forecasts = {
                r.model: TimeSeries.from_times_and_values(
                    index, np.array(r.examples[window]), columns=test.components
                )
                for r in firsts
                if r.model in (TIMESCLIP, "DLinear", "TSMixer", NAIVE)
            }
            paths.append(
                plot_forecasts(
                    test[start : start + INPUT],
                    forecasts,
                    test[start + INPUT : start + INPUT + HORIZON],
                    out / f"forecasts_{dataset}_window{start}.png",
                    title=f"{dataset} test window {start} (scaled), seed {firsts[0].seed}",
                )
            )
        attention = next((r.attention for r in firsts if r.attention is not None), None)
        if attention is not None:
            paths.append(
                plot_selection_attention(
                    np.array(attention),
                    list(test.components),
                    out / f"selection_attention_{dataset}.png",
                )
            )
    return paths


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--datasets", nargs="+", default=None, help="default ETTh1 ETTm1 (smoke: ETTh1)"
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument(
        "--rows", nargs="+", default=[TIMESCLIP, *BASELINES], help="rows compared on every dataset"
    )
    parser.add_argument(
        "--ablation-datasets",
        nargs="*",
        default=["ETTh1"],
        help="datasets that also run the TimesCLIP ablations (none: skip them)",
    )
    parser.add_argument("--epochs", type=int, default=Budget.epochs)
    parser.add_argument("--train-windows", type=int, default=Budget.train_windows)
    parser.add_argument("--val-windows", type=int, default=Budget.val_windows)
    parser.add_argument("--patience", type=int, default=Budget.patience)
    parser.add_argument("--preset", default=Budget.preset, help="CLIP preset, folder or hub id")
    parser.add_argument("--jobs", type=int, default=2, help="rows trained side by side")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per row")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="for accuracy.json and plots/ (default benchmarks/results; smoke: a temp folder)",
    )
    parser.add_argument(
        "--smoke", action="store_true", help="tiny budget and preset, 64 test windows (CI)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = parse_args(argv)
    budget = Budget(
        epochs=args.epochs,
        train_windows=args.train_windows,
        val_windows=args.val_windows,
        patience=args.patience,
        preset=args.preset,
    )
    if args.smoke:
        budget = Budget(
            epochs=1, train_windows=64, val_windows=16, preset="tiny", d_model=32, test_windows=64
        )
    datasets = args.datasets or (["ETTh1"] if args.smoke else ["ETTh1", "ETTm1"])
    tasks = [
        (dataset, seed, name)
        for seed in args.seeds
        for dataset in datasets
        for name in [
            *args.rows,
            *(ABLATIONS if dataset in (args.ablation_datasets or []) else []),
        ]
    ]
    first_seed = min(args.seeds)
    started = time.perf_counter()
    call = [(d, s, n, budget, args.data_dir, args.threads, s == first_seed) for d, s, n in tasks]
    print(f"{len(tasks)} rows, {args.jobs} at a time, {args.threads} thread(s) each; {budget}")
    if args.jobs > 1:
        import multiprocessing

        context = multiprocessing.get_context("spawn")  # no torch state shared with workers
        with ProcessPoolExecutor(args.jobs, mp_context=context) as pool:
            futures = [pool.submit(run_row, *c) for c in call]
            results = []
            for future in futures:
                results.append(future.result())
                _progress(results[-1], len(results), len(tasks))
    else:
        results = []
        for c in call:
            results.append(run_row(*c))
            _progress(results[-1], len(results), len(tasks))
    table = summarise(results)
    print_table(table, args.rows)
    wall_s = time.perf_counter() - started
    report = {
        "protocol": {
            "input": INPUT,
            "horizon": HORIZON,
            "split": "standard 12/4/4 months, StandardScaler fitted on train",
            "test": "every stride-1 window, historical_forecasts(retrain=False)",
        },
        "budget": asdict(budget),
        "seeds": args.seeds,
        "jobs": args.jobs,
        "threads_per_row": args.threads,
        "wall_s": wall_s,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "backbone": f"preset '{budget.preset}' (random weights, NOT pretrained CLIP)"
        if budget.preset in ("tiny", "small")
        else budget.preset,
        "table": table,
        "published": [dict(dataset=d, model=m, mse=a, mae=b) for d, m, a, b in PUBLISHED],
        "runs": [
            {k: v for k, v in asdict(r).items() if k not in ("examples", "attention")}
            for r in results
        ],
    }
    out = args.out
    if out is None:
        out = Path(tempfile.mkdtemp(prefix="bench_accuracy_")) if args.smoke else RESULTS
    out.mkdir(parents=True, exist_ok=True)
    (out / "accuracy.json").write_text(json.dumps(report, indent=2))
    print(f"\nwrote {out / 'accuracy.json'}")
    plots = draw_plots(results, table, args, budget, out / "plots")
    print("plots: " + ", ".join(str(p) for p in plots))
    print(f"total wall time {wall_s / 60:.1f} min")
    return report


def _progress(result: Result, done: int, total: int) -> None:
    print(
        f"[{done}/{total}] {result.dataset} seed {result.seed} {result.model}: "
        f"MSE {result.mse:.4f} MAE {result.mae:.4f}, "
        f"{result.epochs_run} epochs (best {result.best_epoch}), "
        f"train {result.train_s:.0f} s, test {result.test_s:.0f} s",
        flush=True,
    )


if __name__ == "__main__":
    sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
    main()
