"""TimesCLIP's defaults chosen on validation only: variants trained under the accuracy protocol.

    python -m benchmarks.tune_timesclip                  # every variant on ETTh1 and ETTh2, seed 0
    python -m benchmarks.tune_timesclip --report-only    # tuning.md from tuning.json, no fits

Each variant (a TimesCLIP label of ``benchmarks.fits.VARIANTS``, the registry
``bench_accuracy`` takes its rows from) is trained exactly like a ``bench_accuracy`` row (same
splits, budget, seeds, best epoch restored) and judged by the **best validation MSE** its fit
reached (scaled, every validation window). Nothing is ever forecast or scored on the test split
here, so a default picked from this table carries no test information; the test figures of the
chosen defaults come from ``bench_accuracy`` afterwards. ``--references`` fits Darts' peers the
same way, for scale.

Results go to ``results/tuning.json``, each run under its fit key (``benchmarks.fits``),
rewritten after each run, and ``results/tuning.md``: a variant whose key is already there is
skipped; the table holds the runs whose key a label builds today. A TimesCLIP variant is not
fitted when the ``accuracy.json`` beside it holds a run of the same fit key with its validation
loss (the same fit: builder, protocol, seed and windows; a test keeps them equal): that run is
taken, and on ETTm1/ETTm2 it saves an hour or two of CPU. So the ablations' rows give their
validation-only verdict here too.
"""

from __future__ import annotations

import argparse
import os
import platform
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from benchmarks.bench_accuracy import RESULTS
from benchmarks.bench_accuracy import load_runs as load_accuracy_runs
from benchmarks.fits import (
    DATASETS,
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
    splits,
    write_json,
)
from benchmarks.process_memory import peak_rss_mib
from timesclip_darts.atomic_files import write_text_atomic

FORMAT = 2  # tuning.json layout: runs under their fit key (benchmarks.fits)
DEFAULT = TIMESCLIP  # what every variant is compared with
TUNED = tuple(label for label, v in VARIANTS.items() if v.model == TIMESCLIP_MODEL)
TUNING_DATASETS = ("ETTh1", "ETTh2")


@dataclass
class TuningRun:
    key: str  # fits.fit_key: what was fitted
    label: str  # the variant it was recorded as (display only: tables label it by its key)
    dataset: str
    seed: int
    model: str  # fits.model_class
    val_mse: float  # best validation loss of the fit (MSE, scaled): the only score here
    best_epoch: int
    epochs_run: int
    train_s: float
    peak_rss_mib: float
    budget: dict
    arguments: dict  # fits.model_arguments: what was fitted
    source: str = "tune_timesclip"  # or "bench_accuracy": taken from accuracy.json


def tune_row(
    dataset: str, seed: int, label: str, budget: Budget, data_dir: str | None, threads: int
) -> TuningRun:
    """Fit ``label`` under the protocol; validation only."""
    import torch

    from timesclip_darts.evaluation import protocol_work_dir

    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)
    data = splits(dataset, data_dir)
    with protocol_work_dir() as work_dir:
        model = build_model(label, seed, budget, work_dir)
        arguments, built = model_arguments(model), model_class(model)
        _, report = budget.protocol().fit(
            model,
            data.train,
            data.val,
            seed,
            work_dir,
            dataloader_kwargs={"pin_memory": torch.cuda.is_available()},
        )
    return TuningRun(
        key=fit_key(built, arguments, budget, dataset, seed),
        label=label,
        dataset=dataset,
        seed=seed,
        model=built,
        val_mse=report.best_val_loss,
        best_epoch=report.best_epoch,
        epochs_run=report.epochs_run,
        train_s=report.seconds,
        peak_rss_mib=peak_rss_mib(),
        budget=asdict(budget),
        arguments=arguments,
    )


def runs_from_accuracy(path: Path, catalogue: Catalogue) -> list[TuningRun]:
    """The runs in ``path`` (``bench_accuracy``'s results) that recorded their validation loss
    and whose fit a TimesCLIP variant of ``catalogue`` builds today, as that variant's runs."""
    variants = [label for label in catalogue.built if label in TUNED]
    runs = []
    for r in load_accuracy_runs(path):
        label = next((v for v in variants if catalogue.fit(v, r.dataset, r.seed) == r.fit), None)
        if r.best_val_loss is None or label is None:
            continue
        runs.append(
            TuningRun(
                key=r.fit,
                label=label,
                dataset=r.dataset,
                seed=r.seed,
                model=r.model,
                val_mse=r.best_val_loss,
                best_epoch=r.best_epoch,
                epochs_run=r.epochs_run,
                train_s=r.train_s,
                peak_rss_mib=r.peak_rss_mib,
                budget=r.budget,
                arguments=r.arguments,
                source="bench_accuracy",
            )
        )
    return runs


def summarise(tabled: list[tuple[str, TuningRun]], labels) -> dict[str, dict]:
    """Per label (in the order of ``labels``): validation MSE per dataset (mean over seeds)
    and the mean change against ``DEFAULT`` over the runs that have a default run of the same
    dataset and seed. ``tabled``: each run with the label that builds its key today."""
    by_key = {(r.dataset, r.seed, label): r for label, r in tabled}
    table: dict[str, dict] = {}
    for variant in [v for v in labels if any(label == v for label, _ in tabled)]:
        mine = [r for label, r in tabled if label == variant]
        datasets = sorted({r.dataset for r in mine})
        per_dataset = {
            d: float(np.mean([r.val_mse for r in mine if r.dataset == d])) for d in datasets
        }
        paired = [
            (r.dataset, 100 * (r.val_mse / by_key[(r.dataset, r.seed, DEFAULT)].val_mse - 1))
            for r in mine
            if (r.dataset, r.seed, DEFAULT) in by_key
        ]
        paired_datasets = sorted({d for d, _ in paired})
        table[variant] = {
            "val_mse": per_dataset,
            "runs": len(mine),
            "best_epoch": float(np.mean([r.best_epoch for r in mine])),
            "epochs_run": float(np.mean([r.epochs_run for r in mine])),
            "seconds_per_epoch": float(np.mean([r.train_s / r.epochs_run for r in mine])),
            "change_vs_default_pct": (
                float(np.mean([pct for _, pct in paired])) if paired else None
            ),
            # Levers may help one kind of data and not another: the change per dataset.
            "change_vs_default_pct_by_dataset": {
                d: float(np.mean([pct for e, pct in paired if e == d])) for d in paired_datasets
            },
        }
    return table


def tabled_datasets(table: dict) -> list[str]:
    """Every dataset with a tabled run, in the ETT order (the file spans invocations)."""
    seen = {d for e in table.values() for d in e["val_mse"]}
    return sorted(seen, key=lambda d: (DATASETS.index(d) if d in DATASETS else len(DATASETS), d))


def markdown(table: dict, datasets: list[str]) -> str:
    lines = [
        "| variant | "
        + " | ".join(f"{d} val MSE (vs default)" for d in datasets)
        + " | vs default (mean) | runs | epochs run (best) | s/epoch |",
        "|---|" + "---:|" * (len(datasets) + 4),
    ]
    for variant, e in table.items():
        by_dataset = e["change_vs_default_pct_by_dataset"] if variant != DEFAULT else {}
        cells = " | ".join(
            "-"
            if d not in e["val_mse"]
            else f"{e['val_mse'][d]:.4f}"
            + (f" ({by_dataset[d]:+.1f} %)" if d in by_dataset else "")
            for d in datasets
        )
        change = e["change_vs_default_pct"]
        name = f"{variant} (reference)" if variant in PEERS else variant
        lines.append(
            f"| {name} | {cells} | {'-' if change is None else f'{change:+.1f} %'} "
            f"| {e['runs']} | {e['epochs_run']:.1f} ({e['best_epoch']:.1f}) "
            f"| {e['seconds_per_epoch']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def load_runs(path: Path) -> list[TuningRun]:
    return [TuningRun(**run) for run in read_runs(path, FORMAT)]


def write_report(path: Path, runs: list[TuningRun], catalogue: Catalogue) -> dict:
    """Every run, and the table of those whose key a label of ``catalogue`` builds today."""
    labelled = [(catalogue.label_of(r), r) for r in runs]
    tabled = [(label, r) for label, r in labelled if label is not None]
    report = {
        "format": FORMAT,
        "judged_by": "best validation MSE of the fit (scaled, every validation window); "
        "nothing is forecast or scored on the test split",
        "training": catalogue.budget.protocol().describe(),
        "budget": asdict(catalogue.budget),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "table": summarise(tabled, catalogue.built),
        "runs": [asdict(r) for r in runs],
    }
    write_json(path, report)
    return report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--variants", nargs="+", default=list(TUNED), choices=TUNED, metavar="VARIANT"
    )
    parser.add_argument(
        "--references",
        nargs="*",
        default=[],
        choices=PEERS,
        help="Darts rows to score on validation beside the variants",
    )
    parser.add_argument("--datasets", nargs="+", default=list(TUNING_DATASETS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--epochs", type=int, default=Budget.epochs)
    parser.add_argument("--patience", type=int, default=Budget.patience)
    parser.add_argument("--train-windows", type=int, default=None)
    parser.add_argument("--val-windows", type=int, default=None)
    parser.add_argument(
        "--peer-schedule",
        choices=("halving", "none"),
        default=Budget.peer_schedule,
        help="of the --references rows",
    )
    parser.add_argument("--preset", default=Budget.preset)
    parser.add_argument("--jobs", type=int, default=2, help="0: in this process")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--report-only", action="store_true", help="tuning.md from tuning.json, no fits"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = parse_args(argv)
    budget = budget_from_args(args)
    path = args.out / "tuning.json"
    runs = load_runs(path)
    catalogue = Catalogue([*TUNED, *PEERS], budget, scored=False)
    done = {r.key for r in runs}
    for run in runs_from_accuracy(args.out / "accuracy.json", catalogue):
        if run.key not in done:
            runs.append(run)
            done.add(run.key)
            print(f"{run.dataset} seed {run.seed} {run.label}: validation from accuracy.json")
    # The default first, so that every variant has its reference early.
    tasks = [
        (d, s, v)
        for s in args.seeds
        for v in [*sorted(args.variants, key=lambda v: v != DEFAULT), *args.references]
        for d in args.datasets
        if catalogue.key(v, d, s) not in done
    ]
    if args.report_only:
        tasks = []
    print(f"{budget.protocol().describe()}; {budget}")
    print(f"{len(tasks)} runs to do, {args.jobs} at a time", flush=True)

    def record(run: TuningRun, count: int) -> None:
        runs.append(run)
        write_report(path, runs, catalogue)
        print(
            f"[{count}/{len(tasks)}] {run.dataset} seed {run.seed} {run.label}: val MSE "
            f"{run.val_mse:.4f}, best epoch {run.best_epoch} of {run.epochs_run}, "
            f"{run.train_s:.0f} s",
            flush=True,
        )

    calls = [(d, s, v, budget, args.data_dir, args.threads) for d, s, v in tasks]
    run_each(tune_row, calls, args.jobs, record)
    report = write_report(path, runs, catalogue)
    text = markdown(report["table"], tabled_datasets(report["table"]))
    write_text_atomic(args.out / "tuning.md", text)
    print("\n" + text + f"\nwrote {path}")
    return report


if __name__ == "__main__":
    main()
