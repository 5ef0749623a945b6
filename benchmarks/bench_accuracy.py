"""Accuracy on the long-term forecasting literature's protocol: TimesCLIP against Darts' models.

    python benchmarks/bench_accuracy.py           # every row; hours on 2 CPU cores, resumable
    python benchmarks/bench_accuracy.py --smoke   # what CI runs: tiny budget, ETTh1, seconds

Protocol (``timesclip_darts.evaluation``, shared with the demo; ``../shared/data/ETT/README.md``):
ETTh1, ETTh2, ETTm1 and ETTm2, all 7 variates in and out, input 96, horizon 96, the standard
12/4/4-month split, a StandardScaler fitted on train. Every row trains on **every training
window** each epoch (``--train-windows N``: a random sample, fixed per seed, reported), at most
10 epochs, batch 32, early stopping on the loss over every validation window (patience 3), and
is tested with the weights of its best validation epoch: MSE and MAE on scaled values over
every stride-1 test window (Darts' ``historical_forecasts(retrain=False)``).

Each peer with its paper's settings: DLinear and NLinear channel-shared at lr 5e-3 (NLinear
with last-value normalisation), TiDE, TSMixer and NHiTS at Adam lr 1e-3 with reversible instance
norm; all peers with the Time-Series-Library schedule (the learning rate halves every epoch).
TimesCLIP with its own defaults (AdamW 3e-4, weight decay 0.1, dropout 0.3, text encoder at a
tenth of the rate, cosine over the epochs; chosen on validation with ``tune_timesclip.py``).

Rows: every model on ETTh1 and ETTh2, plus the TimesCLIP ablations there; on ETTm1 and ETTm2
(34k training windows each) TimesCLIP, DLinear, NLinear, TiDE, TSMixer and repeat-last.
``--seeds`` (default 0 1): mean and spread (half the range). Each row runs in a fresh worker
process (``--jobs`` side by side, ``--threads`` each) and reports its wall time, epochs run,
best epoch, seconds per epoch, forecasts/s and peak RSS. Results go to ``--out``/accuracy.json
after every row; rows already there with the same budget are skipped (``--rerun`` runs them
again), so an interrupted run resumes where it stopped. Each row records its model's arguments
(defaults included): a row measured with arguments other than today's (a default changed since)
is kept in the file but left out of the table and run again.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from timesclip_darts import published
from timesclip_darts.atomic_files import write_text_atomic

sys.path.insert(0, str(Path(__file__).resolve().parent))
from process_memory import peak_rss_mib, rss_mib  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
FORMAT = 2  # accuracy.json layout: runs keyed by dataset, seed, row and budget
INPUT, HORIZON = 96, 96
NAIVE = "repeat last value"
TIMESCLIP = "TimesCLIP"
ABLATIONS = {  # row name -> TimesCLIPModel switches
    "TimesCLIP, no vision": dict(use_vision=False),
    "TimesCLIP, no alignment loss": dict(lambda_align=0.0),
    "TimesCLIP, no variate selection": dict(use_variate_selection=False),
    "TimesCLIP, trainable ViT": dict(freeze_vision=False),
    # The defaults before 30 November 2026: the paper's rate and dropout (AdamW's weight decay).
    # What the rates chosen on validation buy; its rows were measured as "TimesCLIP" before.
    "TimesCLIP, paper's lr 1e-3, dropout 0.1": dict(dropout=0.1, optimizer_kwargs={"lr": 1e-3}),
}
BASELINES = ("DLinear", "NLinear", "TiDE", "TSMixer", "NHiTS", NAIVE)
ROWS = (TIMESCLIP, *ABLATIONS, *BASELINES)  # every row this script builds
DATASETS = ("ETTh1", "ETTh2", "ETTm1", "ETTm2")
# Rows on the 15-minute datasets (4x the windows): TimesCLIP and the peers the issue names.
MINUTE_ROWS = (TIMESCLIP, "DLinear", "NLinear", "TiDE", "TSMixer", NAIVE)
ABLATION_DATASETS = ("ETTh1", "ETTh2")
# Published figures for the same setting (input 96, horizon 96; timesclip_darts.published):
# (dataset, label, mse, mae), never mixed with measured rows.
PUBLISHED = [
    (f.dataset, f.label, f.mse, f.mae)
    for f in published.figures()
    if (f.input_length, f.horizon) == (INPUT, HORIZON)
]


@dataclass(frozen=True)
class Budget:
    """What every trained row gets (the protocol) and the TimesCLIP preset it uses."""

    epochs: int = 10
    patience: int = 3
    batch_size: int = 32
    train_windows: int | None = None  # None: every training window; N: a random sample
    val_windows: int | None = None  # None: every validation window
    peer_schedule: str = "halving"  # TSLib's type1 schedule for the peers; "none": constant
    preset: str = "small"
    d_model: int = 128
    n_heads: int = 4
    test_windows: int | None = None  # None: the whole test split

    def protocol(self):
        from timesclip_darts.evaluation import TrainingProtocol

        return TrainingProtocol(
            max_epochs=self.epochs,
            patience=self.patience,
            batch_size=self.batch_size,
            train_windows=self.train_windows,
            val_windows=self.val_windows,
        )


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
    peak_rss_mib: float  # the row's own worker process, fit and test
    rss_after_fit_mib: float
    wall_s: float  # the whole row: data, fit, best-epoch reload, test
    budget: dict = field(default_factory=dict)
    best_val_loss: float | None = None  # the restored epoch's validation MSE (older rows: None)
    arguments: dict | None = None  # the model's arguments (model_arguments): what was measured
    examples: dict = field(default_factory=dict)  # window -> forecast values (first seed only)
    attention: list | None = None  # TimesCLIP's selection attention of the first test window

    @property
    def seconds_per_epoch(self) -> float:
        return self.train_s / self.epochs_run if self.epochs_run else 0.0


@lru_cache(maxsize=2)
def _splits(dataset: str, data_dir: str | None):
    from timesclip_darts.data import ett_splits, load_darts_dataset

    return ett_splits(load_darts_dataset(dataset, data_dir), dataset, INPUT)


def _test_split(dataset: str, data_dir: str | None, budget: Budget):
    test = _splits(dataset, data_dir).test
    if budget.test_windows is not None:
        test = test[: INPUT + HORIZON + budget.test_windows - 1]
    return test


def build_model(
    name: str, seed: int, budget: Budget, work_dir: str, timesclip_kwargs: dict | None = None
):
    """A fresh model of row ``name`` with the protocol's arguments; Darts keeps its best
    checkpoint by validation loss in ``work_dir``. ``timesclip_kwargs`` change TimesCLIP rows'
    arguments (a tuning variant, ``tune_timesclip.py``)."""
    import torch
    from darts.models import (
        DLinearModel,
        GlobalNaiveSeasonal,
        NHiTSModel,
        NLinearModel,
        TiDEModel,
        TSMixerModel,
    )

    from timesclip_darts import TimesCLIPModel

    if name == NAIVE:
        return GlobalNaiveSeasonal(input_chunk_length=1, output_chunk_length=HORIZON)
    common = budget.protocol().model_kwargs(seed, work_dir, enable_progress_bar=False)
    if name == TIMESCLIP or name in ABLATIONS:
        kwargs = dict(clip_model_name=budget.preset, d_model=budget.d_model, n_heads=budget.n_heads)
        kwargs.update(ABLATIONS.get(name, {}), **common)
        return TimesCLIPModel(INPUT, HORIZON, **{**kwargs, **(timesclip_kwargs or {})})
    # Each peer in its published multivariate long-term setting and with the schedule of the
    # library those figures come from (Time-Series-Library's "type1": lr halves every epoch):
    # the linear models shared across channels ("individual=False") at DLinear's ETT learning
    # rate, NLinear with its last-value normalisation; the deep models at Adam 1e-3 with
    # reversible instance norm, as TimesCLIP normalises each window too.
    if budget.peer_schedule == "halving":
        common["lr_scheduler_cls"] = torch.optim.lr_scheduler.ExponentialLR
        common["lr_scheduler_kwargs"] = {"gamma": 0.5}
    elif budget.peer_schedule != "none":
        raise ValueError(f"unknown peer schedule {budget.peer_schedule!r} (halving or none)")
    adam = {"optimizer_cls": torch.optim.Adam}
    if name == "DLinear":
        return DLinearModel(
            INPUT, HORIZON, shared_weights=True, optimizer_kwargs={"lr": 5e-3}, **adam, **common
        )
    if name == "NLinear":
        return NLinearModel(
            INPUT,
            HORIZON,
            shared_weights=True,
            normalize=True,
            optimizer_kwargs={"lr": 5e-3},
            **adam,
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


# Arguments that name a run rather than the model: the seed and budget are in a row's key already.
_RUN_ARGUMENTS = ("work_dir", "model_name", "random_state", "pl_trainer_kwargs", "force_reset")


def model_arguments(model) -> dict:
    """What defines ``model`` as a row, as JSON: its constructor arguments with every default
    filled in (Darts' ``model_params``) and, for torch models, the optimiser and schedule it
    resolved (TimesCLIP's defaults live there), minus what names the run. A row is current
    when its recorded arguments equal a freshly built row's."""
    params = {**model.model_params, **getattr(model, "pl_module_params", {})}
    return {k: _jsonable(v) for k, v in sorted(params.items()) if k not in _RUN_ARGUMENTS}


def _jsonable(value):
    if isinstance(value, type):
        return f"{value.__module__}.{value.__qualname__}"
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in sorted(value.items())}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


def current_arguments(names, budget: Budget) -> dict[str, dict]:
    """Row name -> the arguments a row built today gets (construction only: nothing is fitted
    or loaded); names this script does not build are left out."""
    with tempfile.TemporaryDirectory(prefix="bench_accuracy_args_") as work_dir:
        built = {n: build_model(n, 0, budget, work_dir) for n in names if n in ROWS}
    return {n: model_arguments(model) for n, model in built.items()}


def run_row(
    dataset: str,
    seed: int,
    name: str,
    budget: Budget,
    data_dir: str | None,
    threads: int,
    keep_examples: bool,
) -> Result:
    """Train row ``name`` on ``dataset`` with ``seed`` under the protocol, restore its best
    validation epoch and score it on the test split (in a fresh process: RSS is the row's)."""
    import torch

    from timesclip_darts.evaluation import protocol_work_dir, score_on_test

    started_row = time.perf_counter()
    # Lightning resets torch's threads to the core count at fit unless OMP_NUM_THREADS is set.
    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)
    splits = _splits(dataset, data_dir)
    test = _test_split(dataset, data_dir, budget)
    loader = {"pin_memory": torch.cuda.is_available()}
    epochs_run = best_epoch = 0
    best_val_loss = None
    with protocol_work_dir() as work_dir:
        model = build_model(name, seed, budget, work_dir=work_dir)
        arguments = model_arguments(model)
        started = time.perf_counter()
        if name == NAIVE:
            model.fit(splits.train)
            train_s = time.perf_counter() - started
        else:
            model, report = budget.protocol().fit(
                model, splits.train, splits.val, seed, work_dir, dataloader_kwargs=loader
            )
            epochs_run, best_epoch, train_s = report.epochs_run, report.best_epoch, report.seconds
            best_val_loss = report.best_val_loss
    rss_after_fit = rss_mib()
    score = score_on_test(model, test, INPUT, HORIZON, {"dataloader_kwargs": loader})
    network = getattr(model, "model", None)
    n_params = sum(p.numel() for p in network.parameters() if p.requires_grad) if network else 0
    n = len(score.forecasts)
    examples = (
        {str(i): score.forecasts[i].values().tolist() for i in (0, n // 2, n - 1)}
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
        dataset=dataset,
        seed=seed,
        model=name,
        mse=score.mse,
        mae=score.mae,
        train_s=train_s,
        epochs_run=epochs_run,
        best_epoch=best_epoch,
        test_s=score.seconds,
        test_windows=n,
        forecasts_per_s=score.forecasts_per_second,
        trainable_parameters=n_params,
        peak_rss_mib=peak_rss_mib(),
        rss_after_fit_mib=rss_after_fit,
        wall_s=time.perf_counter() - started_row,
        budget=asdict(budget),
        best_val_loss=best_val_loss,
        arguments=arguments,
        examples=examples,
        attention=attention,
    )


def summarise(results: list[Result]) -> dict[str, dict[str, dict[str, float]]]:
    """Mean and spread (half the range) over seeds, per dataset and row."""
    table: dict[str, dict[str, dict[str, float]]] = {}
    for dataset in [*DATASETS, *sorted({r.dataset for r in results} - set(DATASETS))]:
        for r in results:
            if r.dataset == dataset:
                table.setdefault(dataset, {}).setdefault(r.model, {})
    for dataset, rows in table.items():
        for model in rows:
            runs = [r for r in results if r.dataset == dataset and r.model == model]
            entry: dict[str, float] = {"seeds": len(runs)}
            for key in (
                "mse",
                "mae",
                "train_s",
                "seconds_per_epoch",
                "test_s",
                "forecasts_per_s",
                "epochs_run",
                "best_epoch",
                "peak_rss_mib",
                "wall_s",
            ):
                values = np.array([getattr(r, key) for r in runs], dtype=float)
                entry[key] = float(values.mean())
                entry[f"{key}_spread"] = float((values.max() - values.min()) / 2)
            entry["trainable_parameters"] = runs[0].trainable_parameters
            rows[model] = entry
    return table


def _by_mse(rows: dict) -> list[tuple[str, dict]]:
    return sorted(rows.items(), key=lambda kv: kv[1]["mse"])


def compared_rows(rows: dict) -> list[str]:
    """The rows TimesCLIP is ranked against: every measured row but the ablations."""
    return [m for m in rows if m not in ABLATIONS]


def rank_of(table: dict, dataset: str, model: str, rows: list[str]) -> int:
    ordered = sorted(rows, key=lambda m: table[dataset][m]["mse"])
    return ordered.index(model) + 1


def ranks(table: dict) -> dict[str, dict[str, int]]:
    """TimesCLIP's rank by mean MSE among the compared rows of each dataset."""
    out = {}
    for dataset, rows in table.items():
        compared = compared_rows(rows)
        if TIMESCLIP in compared:
            out[dataset] = {
                "rank": rank_of(table, dataset, TIMESCLIP, compared),
                "of": len(compared),
            }
    return out


def print_table(table: dict) -> None:
    for dataset, rows in table.items():
        compared = compared_rows(rows)
        print(f"\n{dataset}: input {INPUT} -> {HORIZON}, MSE/MAE (scaled) over all test windows")
        print(
            f"{'model':<42} {'MSE':>14} {'MAE':>14} {'seeds':>5} {'epochs':>6} {'best':>5} "
            f"{'s/epoch':>8} {'fc/s':>7} {'peak MiB':>8}"
        )
        for model, e in _by_mse(rows):
            mark = "" if model in compared else "  (ablation)"
            print(
                f"{model:<42} {e['mse']:>7.4f}±{e['mse_spread']:.4f} "
                f"{e['mae']:>7.4f}±{e['mae_spread']:.4f} {e['seeds']:>5} {e['epochs_run']:>6.1f} "
                f"{e['best_epoch']:>5.1f} {e['seconds_per_epoch']:>8.1f} "
                f"{e['forecasts_per_s']:>7.0f} {e['peak_rss_mib']:>8.0f}{mark}"
            )
        for name, value_mse, value_mae in [(n, a, b) for d, n, a, b in PUBLISHED if d == dataset]:
            print(f"{name:<42} {value_mse:>7.3f} (pub.) {value_mae:>7.3f} (pub.)")
        if TIMESCLIP in compared:
            rank = rank_of(table, dataset, TIMESCLIP, compared)
            print(f"TimesCLIP ranks {rank} of {len(compared)} measured rows on {dataset} by MSE")


def markdown(table: dict) -> str:
    """The tables as Markdown (what benchmarks/README.md shows), one per dataset."""
    lines = []
    for dataset, rows in table.items():
        compared = compared_rows(rows)
        lines += [
            f"**{dataset}** (input {INPUT}, horizon {HORIZON})",
            "",
            "| row | MSE | MAE | seeds | epochs run (best) | s/epoch | row wall s "
            "| forecasts/s | peak RSS MiB |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for model, e in _by_mse(rows):
            name = f"**{model}**" if model == TIMESCLIP else model
            name += "" if model in compared else " (ablation)"
            lines.append(
                f"| {name} | {e['mse']:.4f} ± {e['mse_spread']:.4f} "
                f"| {e['mae']:.4f} ± {e['mae_spread']:.4f} | {e['seeds']} "
                f"| {e['epochs_run']:.1f} ({e['best_epoch']:.1f}) | {e['seconds_per_epoch']:.1f} "
                f"| {e['wall_s']:.0f} | {e['forecasts_per_s']:,.0f} | {e['peak_rss_mib']:,.0f} |"
            )
        if TIMESCLIP in compared:
            rank = rank_of(table, dataset, TIMESCLIP, compared)
            lines.append("")
            lines.append(f"TimesCLIP ranks {rank} of {len(compared)} measured rows by MSE.")
        lines.append("")
    return "\n".join(lines)


def draw_plots(results: list[Result], table: dict, args, budget: Budget, out: Path) -> list[Path]:
    from darts import TimeSeries

    from timesclip_darts.plots import plot_forecasts, plot_metric_bars, plot_selection_attention

    bars = {
        d: {m: (e["mse"], e["mse_spread"]) for m, e in rows.items()} for d, rows in table.items()
    }
    paths = [plot_metric_bars(bars, "test MSE (scaled)", out / "mse_by_model.png")]
    for dataset in table:
        test = _test_split(dataset, args.data_dir, budget)
        shown = [r for r in results if r.dataset == dataset and r.examples]
        if not shown:
            continue
        seed = min(r.seed for r in shown)  # one seed's forecasts per picture
        firsts = [r for r in shown if r.seed == seed]
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
        "--datasets", nargs="+", default=None, help=f"default {' '.join(DATASETS)} (smoke: ETTh1)"
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument(
        "--rows",
        nargs="+",
        default=None,
        help="rows on every dataset (default: all on ETTh1/ETTh2, "
        f"{', '.join(MINUTE_ROWS)} on ETTm1/ETTm2)",
    )
    parser.add_argument(
        "--ablation-datasets",
        nargs="*",
        default=list(ABLATION_DATASETS),
        help="datasets that also run the TimesCLIP ablations (none: skip them)",
    )
    parser.add_argument("--epochs", type=int, default=Budget.epochs)
    parser.add_argument("--patience", type=int, default=Budget.patience)
    parser.add_argument(
        "--train-windows",
        type=int,
        default=None,
        help="train on a random sample of N windows (fixed per seed) instead of all of them",
    )
    parser.add_argument(
        "--val-windows", type=int, default=None, help="validate on the last N windows only"
    )
    parser.add_argument(
        "--peer-schedule", choices=("halving", "none"), default=Budget.peer_schedule
    )
    parser.add_argument("--preset", default=Budget.preset, help="CLIP preset, folder or hub id")
    parser.add_argument(
        "--jobs",
        type=int,
        default=2,
        help="rows trained side by side, each in its own process (0: all in this one, the "
        "tests' mode; peak RSS is then not the row's own)",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads per row")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="for accuracy.json and plots/ (default benchmarks/results; smoke: a temp folder)",
    )
    parser.add_argument("--rerun", action="store_true", help="run rows already in accuracy.json")
    parser.add_argument(
        "--report-only", action="store_true", help="tables and plots from accuracy.json, no runs"
    )
    parser.add_argument(
        "--smoke", action="store_true", help="tiny budget and preset, 64 test windows (CI)"
    )
    return parser.parse_args(argv)


def plan(args: argparse.Namespace) -> list[tuple[str, int, str]]:
    """(dataset, seed, row) of every row asked for: seed by seed, so that a partial run holds
    whole datasets of one seed first."""
    datasets = args.datasets or (["ETTh1"] if args.smoke else list(DATASETS))
    tasks = []
    for seed in args.seeds:
        for dataset in datasets:
            rows = args.rows or (
                [TIMESCLIP, *BASELINES] if dataset.startswith("ETTh") else list(MINUTE_ROWS)
            )
            ablations = list(ABLATIONS) if dataset in (args.ablation_datasets or []) else []
            tasks += [(dataset, seed, name) for name in [*rows, *ablations]]
    # Longest rows first within a seed, so that two workers finish together.
    return sorted(tasks, key=lambda t: (args.seeds.index(t[1]), -_cost(t[0], t[2])))


def _cost(dataset: str, name: str) -> float:
    """Rough training cost of a row, relative to TimesCLIP on an hourly dataset."""
    factor = {"TimesCLIP, trainable ViT": 3.0, "TimesCLIP, no vision": 0.4, NAIVE: 0.0}
    if name in factor:
        cost = factor[name]
    elif name == TIMESCLIP or name in ABLATIONS:
        cost = 1.0
    else:
        cost = 0.02 if name in ("DLinear", "NLinear") else 0.1
    return cost * (4 if dataset.startswith("ETTm") else 1)


class ResultsFileError(ValueError):
    """An accuracy.json this script cannot resume from without losing what it holds."""


def load_runs(path: Path) -> list[Result]:
    """The rows already measured in ``path`` (none if it does not exist)."""
    if not path.is_file():
        return []
    report = json.loads(path.read_text())
    if report.get("format") != FORMAT:
        raise ResultsFileError(
            f"{path} was written by an older bench_accuracy.py (another protocol); move it "
            "away or pass another --out, so that its figures are not lost"
        )
    examples = _examples_path(path)
    kept = json.loads(examples.read_text()) if examples.is_file() else {}
    return [Result(**{**run, "examples": kept.get(_run_id(run), {})}) for run in report["runs"]]


def _examples_path(path: Path) -> Path:
    """Forecast examples (for the pictures) live beside the results, not in them: they are 97 %
    of the bytes and no table needs them."""
    return path.with_name(f"{path.stem}_examples.json")


def _run_id(run: dict) -> str:
    key = [run["dataset"], run["seed"], run["model"], run["budget"]]
    if run.get("arguments") is not None:  # two rows may differ only there (a default changed)
        key.append(run["arguments"])
    return json.dumps(key, sort_keys=True)


# TimesCLIPModel arguments added after results were recorded, with the value that builds the
# model those results measured: a recorded row without the key ran with that value.
ADDED_ARGUMENTS = {"per_variate_head": False}


def measured_as_today(
    recorded_budget: dict, recorded: dict | None, today: dict | None, budget: Budget
) -> bool:
    """Whether a result recorded under ``recorded_budget`` with model arguments ``recorded``
    is current: the same budget, and the arguments its model gets today (``today``). Without
    recorded arguments (or a model no longer built) it is not. Shared with tune_timesclip."""
    if recorded is None or today is None:
        return False
    added = {k: v for k, v in ADDED_ARGUMENTS.items() if k in today and k not in recorded}
    return recorded_budget == asdict(budget) and {**recorded, **added} == today


def labels_building(
    recorded_budget: dict, recorded: dict | None, arguments: dict[str, dict], budget: Budget
) -> list[str]:
    """The names in ``arguments`` (name -> arguments built today) whose model a result recorded
    under ``recorded_budget`` with ``recorded`` measured. Shared with tune_timesclip."""
    return [
        label
        for label, today in arguments.items()
        if measured_as_today(recorded_budget, recorded, today, budget)
    ]


def relabel_by_arguments(
    runs: list, budget: Budget, arguments: dict[str, dict], name: str, recorded: str
) -> list[str]:
    """Give each run that its name no longer builds (a default moved since) the one name that
    builds exactly its recorded arguments today, if there is one and that name has no current
    run of the same dataset and seed: a run is what it measured, not what its row was called.
    ``name``/``recorded``: the run's attributes for the row name and recorded arguments (shared
    with tune_timesclip). Returns what was relabelled, as "dataset seed: old -> new"."""

    def fits(run, label: str) -> bool:
        return measured_as_today(run.budget, getattr(run, recorded), arguments.get(label), budget)

    taken = {(r.dataset, r.seed, getattr(r, name)) for r in runs if fits(r, getattr(r, name))}
    moved = []
    for run in runs:
        if fits(run, getattr(run, name)):
            continue
        matches = labels_building(run.budget, getattr(run, recorded), arguments, budget)
        if len(matches) == 1 and (run.dataset, run.seed, matches[0]) not in taken:
            moved.append(f"{run.dataset} seed {run.seed}: {getattr(run, name)} -> {matches[0]}")
            setattr(run, name, matches[0])
            taken.add((run.dataset, run.seed, matches[0]))
    return moved


def is_current(r: Result, budget: Budget, arguments: dict[str, dict]) -> bool:
    """Whether row ``r`` was measured under ``budget`` with the arguments it gets today."""
    return measured_as_today(r.budget, r.arguments, arguments.get(r.model), budget)


def write_report(
    path: Path,
    runs: list[Result],
    budget: Budget,
    args,
    wall_s: float,
    arguments: dict[str, dict],
) -> dict:
    """Write every run (all budgets and arguments) and the table of the current runs (this
    budget, today's ``arguments`` per row), atomically."""
    current = [r for r in runs if is_current(r, budget, arguments)]
    table = summarise(current)
    report = {
        "format": FORMAT,
        "protocol": {
            "input": INPUT,
            "horizon": HORIZON,
            "split": "standard 12/4/4 months, StandardScaler fitted on train",
            "training": budget.protocol().describe(),
            "test": "every stride-1 window, historical_forecasts(retrain=False)",
        },
        "budget": asdict(budget),
        "jobs": args.jobs,
        "threads_per_row": args.threads,
        "wall_s_this_invocation": wall_s,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "backbone": f"preset '{budget.preset}' (random weights, NOT pretrained CLIP)"
        if budget.preset in ("tiny", "small", "base")
        else budget.preset,
        "table": table,
        "timesclip_rank": ranks(table),
        "published": [dict(dataset=d, model=m, mse=a, mae=b) for d, m, a, b in PUBLISHED],
        "runs": [asdict(r) for r in runs],
    }
    stored = {**report, "runs": [{**run, "examples": {}} for run in report["runs"]]}
    examples = {_run_id(run): run["examples"] for run in report["runs"] if run["examples"]}
    write_json(_examples_path(path), examples, indent=None)
    write_json(path, stored)
    return report


def write_json(path: Path, payload, indent: int | None = 1) -> None:
    """Write ``payload`` to ``path`` atomically (``timesclip_darts.atomic_files``): an
    interrupted run leaves the previous file whole."""
    write_text_atomic(path, json.dumps(payload, indent=indent))


def budget_from_args(args: argparse.Namespace) -> Budget:
    """The protocol's budget from the command line (shared with ``tune_timesclip.py``)."""
    return Budget(
        epochs=args.epochs,
        patience=args.patience,
        train_windows=args.train_windows,
        val_windows=args.val_windows,
        peer_schedule=args.peer_schedule,
        preset=args.preset,
    )


def main(argv: list[str] | None = None) -> dict:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = parse_args(argv)
    budget = budget_from_args(args)
    if args.smoke:
        budget = Budget(
            epochs=2,
            patience=1,
            train_windows=64,
            val_windows=16,
            preset="tiny",
            d_model=32,
            test_windows=64,
        )
    out = args.out
    if out is None:
        out = Path(tempfile.mkdtemp(prefix="bench_accuracy_")) if args.smoke else RESULTS
    path = out / "accuracy.json"
    runs = load_runs(path)
    tasks = plan(args)
    # Every row, not only those asked or stored: relabelling needs each name's arguments.
    arguments = current_arguments(ROWS, budget)
    for moved in relabel_by_arguments(runs, budget, arguments, "model", "arguments"):
        print(f"relabelled (its arguments are now this row's): {moved}")
    if args.rerun:
        asked = {(d, s, n) for d, s, n in tasks}
        runs = [
            r
            for r in runs
            if (r.dataset, r.seed, r.model) not in asked or not is_current(r, budget, arguments)
        ]
    done = {(r.dataset, r.seed, r.model) for r in runs if is_current(r, budget, arguments)}
    stale = sum(r.budget == asdict(budget) and not is_current(r, budget, arguments) for r in runs)
    if stale:
        print(f"{stale} row(s) in {path} measured with other model arguments: kept, not tabled")
    todo = [t for t in tasks if t not in done]
    if args.report_only:
        todo = []
    first_seed = min(args.seeds)
    started = time.perf_counter()
    print(f"{budget.protocol().describe()}; {budget}")
    print(
        f"{len(tasks)} rows asked, {len(tasks) - len(todo)} already in {path}, {len(todo)} to "
        f"run, {args.jobs} at a time, {args.threads} thread(s) each",
        flush=True,
    )
    calls = [(d, s, n, budget, args.data_dir, args.threads, s == first_seed) for d, s, n in todo]

    def record(result: Result, count: int) -> None:
        runs.append(result)
        write_report(path, runs, budget, args, time.perf_counter() - started, arguments)
        _progress(result, count, len(calls))

    run_each(run_row, calls, args.jobs, record)
    wall_s = time.perf_counter() - started
    report = write_report(path, runs, budget, args, wall_s, arguments)
    print_table(report["table"])
    write_text_atomic(out / "accuracy.md", markdown(report["table"]))
    print(f"\nwrote {path} and {out / 'accuracy.md'}")
    current = [r for r in runs if is_current(r, budget, arguments)]
    plots = draw_plots(current, report["table"], args, budget, out / "plots")
    print("plots: " + ", ".join(str(p) for p in plots))
    print(f"wall time of this invocation {wall_s / 60:.1f} min")
    return report


def run_each(function, calls: list[tuple], jobs: int, record) -> None:
    """``record(function(*call), count)`` for every call, as each finishes: ``jobs`` at a
    time, each in a fresh process (spawn: no torch state shared; one task per child: its peak
    RSS is its own) that exits when this one is killed; ``jobs == 0`` runs them in this process
    (the tests: no start-up per row, but peak RSS is then the process's so far)."""
    if calls and jobs == 0:
        for count, call in enumerate(calls, start=1):
            record(function(*call), count)
    elif calls:
        import multiprocessing

        with ProcessPoolExecutor(
            jobs,
            mp_context=multiprocessing.get_context("spawn"),
            max_tasks_per_child=1,
            initializer=_exit_with_parent,
            initargs=(os.getpid(),),
        ) as pool:
            futures = [pool.submit(function, *c) for c in calls]
            for count, future in enumerate(as_completed(futures), start=1):
                record(future.result(), count)


def _exit_with_parent(parent: int) -> None:
    """End this worker when the benchmark that started it is gone (killed, not interrupted
    from a terminal): an orphaned row would train for an hour with nowhere to report."""
    import threading

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _progress(result: Result, done: int, total: int) -> None:
    print(
        f"[{done}/{total}] {result.dataset} seed {result.seed} {result.model}: "
        f"MSE {result.mse:.4f} MAE {result.mae:.4f}, "
        f"{result.epochs_run} epochs (best {result.best_epoch}), "
        f"train {result.train_s:.0f} s, test {result.test_s:.0f} s, "
        f"peak {result.peak_rss_mib:.0f} MiB, row {result.wall_s:.0f} s",
        flush=True,
    )


if __name__ == "__main__":
    sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
    main()
