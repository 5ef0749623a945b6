"""TimesCLIP's defaults chosen on validation only: variants trained under the accuracy protocol.

Each variant (a set of ``TimesCLIPModel`` arguments) is trained exactly like a
``bench_accuracy.py`` row (same splits, budget, seeds, best epoch restored) and judged by the
**best validation MSE** its fit reached (scaled, every validation window). Nothing is ever
forecast or scored on the test split here, so a default picked from this table carries no test
information; the test figures of the chosen defaults come from ``bench_accuracy.py`` afterwards.

Results go to ``results/tuning.json`` (rewritten after each run, resumable: runs already there
with the same budget and model arguments are skipped; one measured before a default changed is
kept but not tabled) and ``results/tuning.md``. A variant of a dataset and seed is not fitted
again when the ``accuracy.json`` beside it holds a TimesCLIP row (the model or an ablation) with
exactly that variant's arguments and its validation loss: that row is the same fit (same
builder, protocol, seed and windows; a test keeps them equal), and on ETTm1/ETTm2 it is an hour
or two of CPU. So the ablations' rows give their validation-only verdict here too.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from timesclip_darts.atomic_files import write_text_atomic

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_accuracy import (  # noqa: E402
    DATASETS,
    RESULTS,
    TIMESCLIP,
    Budget,
    _splits,
    budget_from_args,
    build_model,
    labels_building,
    measured_as_today,
    model_arguments,
    relabel_by_arguments,
    run_each,
    write_json,
)
from bench_accuracy import (  # noqa: E402
    load_runs as load_accuracy_runs,
)
from process_memory import peak_rss_mib  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FORMAT = 1
DEFAULT = "default"
# Variant name -> TimesCLIPModel arguments changed from the defaults (which "default" keeps).
# The defaults before 30 November 2026 (the paper's rate and dropout, AdamW's weight decay 0.01):
# every variant below but the default was measured against them, so each states them in full.
PAPER = {"dropout": 0.1, "optimizer_kwargs": {"lr": 1e-3}}
VARIANTS: dict[str, dict] = {
    # Since 30 November: lr 3e-4, dropout 0.3, weight decay 0.1 (was the variant "lr 3e-4,
    # dropout 0.3, weight decay 0.1"; its runs carry that name's arguments and are the default's).
    DEFAULT: {},
    "paper's lr 1e-3, dropout 0.1": PAPER,
    # The ETTh rows peaked at epochs 1-3 and then overfit: regularise harder ...
    "dropout 0.3, weight decay 0.1": {
        "dropout": 0.3,
        "optimizer_kwargs": {"lr": 1e-3, "weight_decay": 0.1},
    },
    # ... or learn more slowly (the text encoder keeps its tenth of the rate). Both together
    # lowered the validation loss on average on all four datasets: the default since.
    "lr 3e-4": {"dropout": 0.1, "optimizer_kwargs": {"lr": 3e-4}},
    "lambda_align 0.5": {**PAPER, "lambda_align": 0.5},
    "d_model 256": {**PAPER, "d_model": 256},
    "patch 8, stride 4": {**PAPER, "patch_length": 8, "stride": 4},
    "trainable ViT": {**PAPER, "freeze_vision": False},
    # With random-weight presets neither tower is pretrained: does the towers' tenth of the
    # rate still help? (It does: the full rate was worse on both datasets, seed 0.)
    "trainable ViT, towers at 1e-3": {**PAPER, "freeze_vision": False, "text_encoder_lr": 1e-3},
    # The trainable ViT under today's defaults: bench_accuracy's "TimesCLIP, trainable ViT".
    "trainable ViT, default rates": {"freeze_vision": False},
    # bench_accuracy's other ablations under today's defaults, judged on validation (their
    # rows there are these fits): what a validation-only choice would say of each part.
    "no vision": {"use_vision": False},
    "no alignment loss": {"lambda_align": 0.0},
    "no variate selection": {"use_variate_selection": False},
    # One generator head per target instead of one shared across them (DLinear's "individual"):
    # each variate's own mapping, at seven times the head's weights.
    "per-variate head": {"per_variate_head": True},
}
TUNING_DATASETS = ("ETTh1", "ETTh2")
# Darts rows of bench_accuracy.py, fitted alike and scored on validation too: how far a variant
# still is from the peers, on the same windows, without looking at the test split.
REFERENCES = ("DLinear", "NLinear", "TiDE", "TSMixer", "NHiTS")


@dataclass
class TuningRun:
    dataset: str
    seed: int
    variant: str
    arguments: dict  # what the variant changed
    val_mse: float  # best validation loss of the fit (MSE, scaled): the only score here
    best_epoch: int
    epochs_run: int
    train_s: float
    peak_rss_mib: float
    budget: dict
    # bench_accuracy.model_arguments of the fitted model (defaults included): a run whose
    # arguments differ from a variant built today (a default changed since) is not tabled.
    model_arguments: dict | None = None
    source: str = "tune_timesclip"  # or "bench_accuracy": taken from accuracy.json


def build_variant(variant: str, seed: int, budget: Budget, work_dir: str):
    """TimesCLIP with ``variant``'s arguments, or the reference row ``variant``."""
    if variant in REFERENCES:
        return build_model(variant, seed, budget, work_dir)
    return build_model(TIMESCLIP, seed, budget, work_dir, timesclip_kwargs=VARIANTS[variant])


def current_arguments(variants, budget: Budget) -> dict[str, dict]:
    """Variant -> the arguments its model gets today (construction only)."""
    known = [v for v in variants if v in VARIANTS or v in REFERENCES]
    with tempfile.TemporaryDirectory(prefix="tune_timesclip_args_") as work_dir:
        return {v: model_arguments(build_variant(v, 0, budget, work_dir)) for v in known}


def is_current(run: TuningRun, budget: Budget, arguments: dict[str, dict]) -> bool:
    return measured_as_today(run.budget, run.model_arguments, arguments.get(run.variant), budget)


def tune_row(
    dataset: str, seed: int, variant: str, budget: Budget, data_dir: str | None, threads: int
) -> TuningRun:
    """Fit TimesCLIP with ``variant``'s arguments (or the reference row ``variant``) under the
    protocol; validation only."""
    import torch

    from timesclip_darts.evaluation import protocol_work_dir

    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)
    splits = _splits(dataset, data_dir)
    arguments = VARIANTS.get(variant, {})
    with protocol_work_dir() as work_dir:
        model = build_variant(variant, seed, budget, work_dir)
        recorded = model_arguments(model)
        _, report = budget.protocol().fit(
            model,
            splits.train,
            splits.val,
            seed,
            work_dir,
            dataloader_kwargs={"pin_memory": torch.cuda.is_available()},
        )
    return TuningRun(
        dataset=dataset,
        seed=seed,
        variant=variant,
        arguments=arguments,
        val_mse=report.best_val_loss,
        best_epoch=report.best_epoch,
        epochs_run=report.epochs_run,
        train_s=report.seconds,
        peak_rss_mib=peak_rss_mib(),
        budget=asdict(budget),
        model_arguments=recorded,
    )


def runs_from_accuracy(path: Path, budget: Budget, arguments: dict[str, dict]) -> list[TuningRun]:
    """``bench_accuracy.py``'s TimesCLIP rows in ``path`` (the model and its ablations) that
    recorded their best validation loss, each as a run of the one variant that builds exactly
    its arguments today under ``budget``; rows that no variant builds are left out."""
    variants = {v: a for v, a in arguments.items() if v in VARIANTS}  # not the references
    runs = []
    for r in load_accuracy_runs(path):
        matches = labels_building(r.budget, r.arguments, variants, budget)
        if r.best_val_loss is None or len(matches) != 1:
            continue
        runs.append(
            TuningRun(
                dataset=r.dataset,
                seed=r.seed,
                variant=matches[0],
                arguments=VARIANTS[matches[0]],
                val_mse=r.best_val_loss,
                best_epoch=r.best_epoch,
                epochs_run=r.epochs_run,
                train_s=r.train_s,
                peak_rss_mib=r.peak_rss_mib,
                budget=r.budget,
                model_arguments=r.arguments,
                source="bench_accuracy",
            )
        )
    return runs


def summarise(runs: list[TuningRun]) -> dict[str, dict]:
    """Per variant: validation MSE per dataset (mean over seeds) and the mean change against
    ``default`` over the runs that have a default run of the same dataset and seed."""
    by_key = {(r.dataset, r.seed, r.variant): r for r in runs}
    table: dict[str, dict] = {}
    for variant in [v for v in (*VARIANTS, *REFERENCES) if any(r.variant == v for r in runs)]:
        mine = [r for r in runs if r.variant == variant]
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
    """Every dataset with a current run, in the ETT order (the file spans invocations)."""
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
        name = f"{variant} (reference)" if variant in REFERENCES else variant
        lines.append(
            f"| {name} | {cells} | {'-' if change is None else f'{change:+.1f} %'} "
            f"| {e['runs']} | {e['epochs_run']:.1f} ({e['best_epoch']:.1f}) "
            f"| {e['seconds_per_epoch']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def load_runs(path: Path) -> list[TuningRun]:
    if not path.is_file():
        return []
    report = json.loads(path.read_text())
    if report.get("format") != FORMAT:
        raise ValueError(f"{path} was written by another tune_timesclip.py; pass another --out")
    return [TuningRun(**run) for run in report["runs"]]


def write_report(
    path: Path, runs: list[TuningRun], budget: Budget, arguments: dict[str, dict]
) -> dict:
    """Every run, and the table of those current under ``budget`` and today's ``arguments``."""
    current = [r for r in runs if is_current(r, budget, arguments)]
    report = {
        "format": FORMAT,
        "judged_by": "best validation MSE of the fit (scaled, every validation window); "
        "nothing is forecast or scored on the test split",
        "training": budget.protocol().describe(),
        "budget": asdict(budget),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "table": summarise(current),
        "runs": [asdict(r) for r in runs],
    }
    write_json(path, report)
    return report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument(
        "--references",
        nargs="*",
        default=[],
        choices=list(REFERENCES),
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
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = parse_args(argv)
    budget = budget_from_args(args)
    path = args.out / "tuning.json"
    runs = load_runs(path)
    arguments = current_arguments({*VARIANTS, *args.references, *(r.variant for r in runs)}, budget)
    variants_today = {v: a for v, a in arguments.items() if v in VARIANTS}
    for moved in relabel_by_arguments(runs, budget, variants_today, "variant", "model_arguments"):
        print(f"relabelled (its arguments are now this variant's): {moved}")
    for run in runs:
        if run.variant in VARIANTS and is_current(run, budget, arguments):
            run.arguments = VARIANTS[run.variant]  # what its variant changes, as named today
    done = {(r.dataset, r.seed, r.variant) for r in runs if is_current(r, budget, arguments)}
    for run in runs_from_accuracy(args.out / "accuracy.json", budget, arguments):
        if (run.dataset, run.seed, run.variant) not in done:
            runs.append(run)
            done.add((run.dataset, run.seed, run.variant))
            print(f"{run.dataset} seed {run.seed} {run.variant}: validation from accuracy.json")
    # The default first, so that every variant has its reference early.
    tasks = [
        (d, s, v)
        for s in args.seeds
        for v in [*sorted(args.variants, key=lambda v: v != DEFAULT), *args.references]
        for d in args.datasets
        if (d, s, v) not in done
    ]
    print(f"{budget.protocol().describe()}; {budget}")
    print(f"{len(tasks)} runs to do, {args.jobs} at a time", flush=True)

    def record(run: TuningRun, count: int) -> None:
        runs.append(run)
        write_report(path, runs, budget, arguments)
        print(
            f"[{count}/{len(tasks)}] {run.dataset} seed {run.seed} {run.variant}: val MSE "
            f"{run.val_mse:.4f}, best epoch {run.best_epoch} of {run.epochs_run}, "
            f"{run.train_s:.0f} s",
            flush=True,
        )

    calls = [(d, s, v, budget, args.data_dir, args.threads) for d, s, v in tasks]
    run_each(tune_row, calls, args.jobs, record)
    report = write_report(path, runs, budget, arguments)
    text = markdown(report["table"], tabled_datasets(report["table"]))
    write_text_atomic(args.out / "tuning.md", text)
    print("\n" + text + f"\nwrote {path}")
    return report


if __name__ == "__main__":
    sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
    main()
