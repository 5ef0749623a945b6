"""Accuracy on the long-term forecasting literature's protocol: TimesCLIP against Darts' models.

    python -m benchmarks.bench_accuracy           # every row; hours on 2 CPU cores, resumable
    python -m benchmarks.bench_accuracy --smoke   # what CI runs: tiny budget, ETTh1, seconds

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
tenth of the rate, cosine over the epochs; chosen on validation with ``tune_timesclip``). Every
row is a label of ``benchmarks.fits.VARIANTS``.

Rows: every model on ETTh1 and ETTh2, plus the TimesCLIP ablations there; on ETTm1 and ETTm2
(34k training windows each) TimesCLIP, DLinear, NLinear, TiDE, TSMixer and repeat-last.
``--seeds`` (default 0 1): mean and spread (half the range). Each row runs in a fresh worker
process (``--jobs`` side by side, ``--threads`` each) and reports its wall time, epochs run,
best epoch, seconds per epoch, forecasts/s and peak RSS. Results go to ``--out``/accuracy.json
after every row, each run under its key (``benchmarks.fits``: what was fitted, with its test
windows). A row whose key is already there is skipped (``--rerun`` runs it again), so an
interrupted run resumes where it stopped. The tables hold the runs whose key a row builds today;
a run that no row builds any more (a default changed since) stays in the file, untabled.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from benchmarks.fits import (
    DATASETS,
    HORIZON,
    INPUT,
    NAIVE,
    PAPER,
    PEERS,
    TIMESCLIP,
    TIMESCLIP_MODEL,
    VARIANTS,
    Budget,
    Catalogue,
    budget_from_args,
    build_model,
    fit_key,
    model_arguments,
    model_class,
    read_runs,
    run_each,
    scored_key,
    splits,
    write_json,
)
from benchmarks.process_memory import peak_rss_mib, rss_mib
from timesclip_darts import published
from timesclip_darts.atomic_files import write_text_atomic

RESULTS = Path(__file__).resolve().parent / "results"
FORMAT = 3  # accuracy.json layout: runs under their key (benchmarks.fits)
ABLATIONS = (
    "TimesCLIP, no vision",
    "TimesCLIP, no alignment loss",
    "TimesCLIP, no variate selection",
    "TimesCLIP, trainable ViT",
    PAPER,  # what the rates and dropout chosen on validation buy
)
BASELINES = (*PEERS, NAIVE)
ROWS = (TIMESCLIP, *ABLATIONS, *BASELINES)  # every row this script runs by default
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


@dataclass
class Result:
    key: str  # fits.scored_key: what was fitted and the test windows it was scored on
    fit: str  # fits.fit_key: what was fitted (tune_timesclip finds the validation loss by it)
    label: str  # the row it was recorded as (display only: tables label it by its key)
    dataset: str
    seed: int
    model: str  # fits.model_class
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
    best_val_loss: float | None = None  # the restored epoch's validation MSE (None: not kept)
    arguments: dict = field(default_factory=dict)  # fits.model_arguments: what was fitted
    examples: dict = field(default_factory=dict)  # window -> forecast values (first seed only)
    attention: list | None = None  # TimesCLIP's selection attention of the first test window

    @property
    def seconds_per_epoch(self) -> float:
        return self.train_s / self.epochs_run if self.epochs_run else 0.0


def _test_split(dataset: str, data_dir: str | None, budget: Budget):
    test = splits(dataset, data_dir).test
    if budget.test_windows is not None:
        test = test[: INPUT + HORIZON + budget.test_windows - 1]
    return test


def run_row(
    dataset: str,
    seed: int,
    label: str,
    budget: Budget,
    data_dir: str | None,
    threads: int,
    keep_examples: bool,
) -> Result:
    """Train row ``label`` on ``dataset`` with ``seed`` under the protocol, restore its best
    validation epoch and score it on the test split (in a fresh process: RSS is the row's)."""
    import torch

    from timesclip_darts.evaluation import protocol_work_dir, score_on_test

    started_row = time.perf_counter()
    # Lightning resets torch's threads to the core count at fit unless OMP_NUM_THREADS is set.
    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)
    data = splits(dataset, data_dir)
    test = _test_split(dataset, data_dir, budget)
    loader = {"pin_memory": torch.cuda.is_available()}
    epochs_run = best_epoch = 0
    best_val_loss = None
    with protocol_work_dir() as work_dir:
        model = build_model(label, seed, budget, work_dir=work_dir)
        arguments, built = model_arguments(model), model_class(model)
        started = time.perf_counter()
        if label == NAIVE:
            model.fit(data.train)
            train_s = time.perf_counter() - started
        else:
            model, report = budget.protocol().fit(
                model, data.train, data.val, seed, work_dir, dataloader_kwargs=loader
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
    if keep_examples and label == TIMESCLIP:
        core = model.core.eval()
        with torch.no_grad():
            window = torch.as_tensor(test[:INPUT].values(), dtype=torch.float32)[None]
            attention = core.forward_detailed(window).selection_attention[0].tolist()
    fit = fit_key(built, arguments, budget, dataset, seed)
    return Result(
        key=scored_key(fit, budget),
        fit=fit,
        label=label,
        dataset=dataset,
        seed=seed,
        model=built,
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


def summarise(tabled: list[tuple[str, Result]]) -> dict[str, dict[str, dict[str, float]]]:
    """Mean and spread (half the range) over seeds, per dataset and row; ``tabled``: each run
    with the row that builds its key today."""
    groups: dict[str, dict[str, list[Result]]] = {}
    for dataset in [*DATASETS, *sorted({r.dataset for _, r in tabled} - set(DATASETS))]:
        for label, r in tabled:
            if r.dataset == dataset:
                groups.setdefault(dataset, {}).setdefault(label, []).append(r)
    return {d: {label: _entry(runs) for label, runs in rows.items()} for d, rows in groups.items()}


def _entry(runs: list[Result]) -> dict[str, float]:
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
    return entry


def _by_mse(rows: dict) -> list[tuple[str, dict]]:
    return sorted(rows.items(), key=lambda kv: kv[1]["mse"])


def compared_rows(rows: dict) -> list[str]:
    """The rows TimesCLIP is ranked against: every measured row but its variants (ablations)."""
    return [m for m in rows if m == TIMESCLIP or VARIANTS[m].model != TIMESCLIP_MODEL]


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


def draw_plots(
    tabled: list[tuple[str, Result]], table: dict, args, budget: Budget, out: Path
) -> list[Path]:
    from darts import TimeSeries

    from timesclip_darts.plots import plot_forecasts, plot_metric_bars, plot_selection_attention

    bars = {
        d: {m: (e["mse"], e["mse_spread"]) for m, e in rows.items()} for d, rows in table.items()
    }
    paths = [plot_metric_bars(bars, "test MSE (scaled)", out / "mse_by_model.png")]
    for dataset in table:
        test = _test_split(dataset, args.data_dir, budget)
        shown = [(label, r) for label, r in tabled if r.dataset == dataset and r.examples]
        if not shown:
            continue
        seed = min(r.seed for _, r in shown)  # one seed's forecasts per picture
        firsts = [(label, r) for label, r in shown if r.seed == seed]
        first = firsts[0][1]
        for window in sorted(first.examples, key=int):
            start = int(window)
            index = test.time_index[start + INPUT : start + INPUT + HORIZON]
            forecasts = {
                label: TimeSeries.from_times_and_values(
                    index, np.array(r.examples[window]), columns=test.components
                )
                for label, r in firsts
                if label in (TIMESCLIP, "DLinear", "TSMixer", NAIVE)
            }
            paths.append(
                plot_forecasts(
                    test[start : start + INPUT],
                    forecasts,
                    test[start + INPUT : start + INPUT + HORIZON],
                    out / f"forecasts_{dataset}_window{start}.png",
                    title=f"{dataset} test window {start} (scaled), seed {seed}",
                )
            )
        attention = next((r.attention for _, r in firsts if r.attention is not None), None)
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
        choices=list(VARIANTS),
        metavar="ROW",
        help="labels of benchmarks.fits.VARIANTS to run on every dataset (default: all rows "
        f"on ETTh1/ETTh2, {', '.join(MINUTE_ROWS)} on ETTm1/ETTm2)",
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
    parser.add_argument(
        "--rerun", action="store_true", help="run the asked rows again (drops their runs)"
    )
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
    elif VARIANTS[name].model == TIMESCLIP_MODEL:
        cost = 1.0
    else:
        cost = 0.02 if name in ("DLinear", "NLinear") else 0.1
    return cost * (4 if dataset.startswith("ETTm") else 1)


def load_runs(path: Path) -> list[Result]:
    """The runs recorded in ``path`` (none if it does not exist), with their forecast examples."""
    runs = read_runs(path, FORMAT)
    examples = _examples_path(path)
    kept = json.loads(examples.read_text()) if examples.is_file() else {}
    return [Result(**{**run, "examples": kept.get(run["key"], {})}) for run in runs]


def _examples_path(path: Path) -> Path:
    """Forecast examples (for the pictures) live beside the results, not in them: they are 97 %
    of the bytes and no table needs them."""
    return path.with_name(f"{path.stem}_examples.json")


def tabled_runs(runs: list[Result], catalogue: Catalogue) -> list[tuple[str, Result]]:
    """Each run whose key a row of ``catalogue`` builds today, with that row's label."""
    labelled = [(catalogue.label_of(r), r) for r in runs]
    return [(label, r) for label, r in labelled if label is not None]


def write_report(
    path: Path, runs: list[Result], tabled: list[tuple[str, Result]], budget: Budget, args, wall_s
) -> dict:
    """Write every run and the table of the ``tabled`` ones, atomically."""
    table = summarise(tabled)
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
    examples = {run["key"]: run["examples"] for run in report["runs"] if run["examples"]}
    write_json(_examples_path(path), examples, indent=None)
    write_json(path, stored)
    return report


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
    catalogue = Catalogue(dict.fromkeys([*ROWS, *(label for _, _, label in tasks)]), budget, True)
    asked = {catalogue.key(label, d, s) for d, s, label in tasks}
    if args.rerun:
        runs = [r for r in runs if r.key not in asked]
    done = {r.key for r in runs}
    todo = [] if args.report_only else [t for t in tasks if catalogue.key(t[2], *t[:2]) not in done]
    first_seed = min(args.seeds)
    started = time.perf_counter()
    print(f"{budget.protocol().describe()}; {budget}")
    print(
        f"{len(tasks)} rows asked, {len(asked & done)} already in {path}, {len(todo)} to "
        f"run, {args.jobs} at a time, {args.threads} thread(s) each",
        flush=True,
    )
    calls = [(d, s, n, budget, args.data_dir, args.threads, s == first_seed) for d, s, n in todo]

    def record(result: Result, count: int) -> None:
        runs.append(result)
        tabled = tabled_runs(runs, catalogue)
        write_report(path, runs, tabled, budget, args, time.perf_counter() - started)
        _progress(result, count, len(calls))

    run_each(run_row, calls, args.jobs, record)
    wall_s = time.perf_counter() - started
    tabled = tabled_runs(runs, catalogue)
    if len(tabled) < len(runs):
        print(f"{len(runs) - len(tabled)} run(s) in {path} that no row builds today: not tabled")
    report = write_report(path, runs, tabled, budget, args, wall_s)
    print_table(report["table"])
    write_text_atomic(out / "accuracy.md", markdown(report["table"]))
    print(f"\nwrote {path} and {out / 'accuracy.md'}")
    plots = draw_plots(tabled, report["table"], args, budget, out / "plots")
    print("plots: " + ", ".join(str(p) for p in plots))
    print(f"wall time of this invocation {wall_s / 60:.1f} min")
    return report


def _progress(result: Result, done: int, total: int) -> None:
    print(
        f"[{done}/{total}] {result.dataset} seed {result.seed} {result.label}: "
        f"MSE {result.mse:.4f} MAE {result.mae:.4f}, "
        f"{result.epochs_run} epochs (best {result.best_epoch}), "
        f"train {result.train_s:.0f} s, test {result.test_s:.0f} s, "
        f"peak {result.peak_rss_mib:.0f} MiB, row {result.wall_s:.0f} s",
        flush=True,
    )


if __name__ == "__main__":
    main()
