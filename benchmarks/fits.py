"""What the accuracy and tuning benchmarks fit, and how a fit is known again.

One registry of variants (:data:`VARIANTS`): a label -> the model class and the arguments it
changes from the protocol's (TimesCLIP: the budget's preset, ``d_model`` and ``n_heads`` and
``TimesCLIPModel``'s defaults; the peers: their papers' settings). ``bench_accuracy.py`` and
``tune_timesclip.py`` each pick the labels they run. A label is display only: a run is
identified by its **key**, a digest of what was fitted.

- The fit key (:func:`fit_key`): sha256 of the canonical JSON of the model class
  (``module.qualname``), every constructor argument with its default filled in
  (:func:`model_arguments`: Darts' ``model_params`` and the optimiser and schedule the model
  resolved, minus what only names a run: work dir, model name, seed, trainer settings,
  ``force_reset``), the training protocol (epochs, patience, batch, training and validation
  windows), the dataset and the seed; the first 16 hex digits. The budget's preset,
  ``d_model``, ``n_heads`` and peer schedule are in it through the arguments they give. Library
  versions and the models' code are not: a change there that keeps every argument needs
  ``--rerun``.
- A tuning run is validation only: its key is its fit key. An accuracy run is also scored on
  the test split, so its key (:func:`scored_key`) digests its fit key with the test windows
  (``Budget.test_windows``): two test budgets never mix in one table, and a tuning run finds
  the accuracy run of the same fit by the fit key that run records.

So a changed default makes new keys by itself: the runs recorded before it keep theirs, stay in
the results file, and are tabled under no label.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

from timesclip_darts.atomic_files import write_text_atomic

INPUT, HORIZON = 96, 96
DATASETS = ("ETTh1", "ETTh2", "ETTm1", "ETTm2")


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


# ------------------------------------------------------------------------------ the registry
TIMESCLIP_MODEL = "timesclip_darts.TimesCLIPModel"
NAIVE_MODEL = "darts.models.GlobalNaiveSeasonal"


@dataclass(frozen=True)
class Variant:
    """A model class (``module.name``, imported when built) and the arguments it changes."""

    model: str
    arguments: dict = field(default_factory=dict)


TIMESCLIP = "TimesCLIP"  # TimesCLIPModel's defaults
NAIVE = "repeat last value"
PAPER = "TimesCLIP, paper's lr 1e-3, dropout 0.1"  # AdamW's own weight decay, 0.01
_PAPER = {"dropout": 0.1, "optimizer_kwargs": {"lr": 1e-3}}
# The peers in their published multivariate long-term setting, with Adam (build_model): the
# linear models shared across channels at DLinear's ETT rate, NLinear with its last-value
# normalisation; the deep models at 1e-3 with reversible instance norm, as TimesCLIP normalises
# each window too.
_LINEAR = {"shared_weights": True, "optimizer_kwargs": {"lr": 5e-3}}
_DEEP = {"use_reversible_instance_norm": True, "optimizer_kwargs": {"lr": 1e-3}}


def _timesclip(**arguments) -> Variant:
    return Variant(TIMESCLIP_MODEL, arguments)


VARIANTS: dict[str, Variant] = {
    TIMESCLIP: _timesclip(),
    PAPER: _timesclip(**_PAPER),
    "TimesCLIP, lr 1e-3": _timesclip(optimizer_kwargs={"lr": 1e-3, "weight_decay": 0.1}),
    "TimesCLIP, dropout 0.1, weight decay 0.01": _timesclip(
        dropout=0.1, optimizer_kwargs={"lr": 3e-4}
    ),
    f"{PAPER}, lambda_align 0.5": _timesclip(**_PAPER, lambda_align=0.5),
    f"{PAPER}, d_model 256": _timesclip(**_PAPER, d_model=256),
    f"{PAPER}, patch 8, stride 4": _timesclip(**_PAPER, patch_length=8, stride=4),
    f"{PAPER}, trainable ViT": _timesclip(**_PAPER, freeze_vision=False),
    # With random-weight presets neither tower is pretrained: does their tenth of the rate help?
    f"{PAPER}, trainable ViT, towers at 1e-3": _timesclip(
        **_PAPER, freeze_vision=False, text_encoder_lr=1e-3
    ),
    "TimesCLIP, trainable ViT": _timesclip(freeze_vision=False),
    "TimesCLIP, no vision": _timesclip(use_vision=False),
    "TimesCLIP, no alignment loss": _timesclip(lambda_align=0.0),
    "TimesCLIP, no variate selection": _timesclip(use_variate_selection=False),
    # One generator head per target instead of one shared (DLinear's "individual"): seven times
    # the head's weights.
    "TimesCLIP, per-variate head": _timesclip(per_variate_head=True),
    "DLinear": Variant("darts.models.DLinearModel", _LINEAR),
    "NLinear": Variant("darts.models.NLinearModel", {**_LINEAR, "normalize": True}),
    "TiDE": Variant("darts.models.TiDEModel", _DEEP),
    "TSMixer": Variant("darts.models.TSMixerModel", _DEEP),
    "NHiTS": Variant("darts.models.NHiTSModel", _DEEP),
    NAIVE: Variant(NAIVE_MODEL, {"input_chunk_length": 1}),
}
PEERS = ("DLinear", "NLinear", "TiDE", "TSMixer", "NHiTS")


def build_model(label: str, seed: int, budget: Budget, work_dir: str):
    """A fresh model of ``label`` under ``budget``'s protocol; Darts keeps its best checkpoint
    by validation loss in ``work_dir``."""
    import importlib

    import torch

    variant = VARIANTS[label]
    module, name = variant.model.rsplit(".", 1)
    model_class = getattr(importlib.import_module(module), name)
    if variant.model == NAIVE_MODEL:
        return model_class(output_chunk_length=HORIZON, **variant.arguments)
    common = budget.protocol().model_kwargs(seed, work_dir, enable_progress_bar=False)
    if variant.model == TIMESCLIP_MODEL:
        common.update(clip_model_name=budget.preset, d_model=budget.d_model, n_heads=budget.n_heads)
    else:
        # The peers with the schedule of the library their figures come from
        # (Time-Series-Library's "type1": the rate halves every epoch).
        common["optimizer_cls"] = torch.optim.Adam
        if budget.peer_schedule == "halving":
            common["lr_scheduler_cls"] = torch.optim.lr_scheduler.ExponentialLR
            common["lr_scheduler_kwargs"] = {"gamma": 0.5}
        elif budget.peer_schedule != "none":
            raise ValueError(f"unknown peer schedule {budget.peer_schedule!r} (halving or none)")
    return model_class(INPUT, HORIZON, **{**common, **variant.arguments})


# ---------------------------------------------------------------------------------- the key
# Arguments that name a run rather than the model: the seed is in the key on its own.
_RUN_ARGUMENTS = ("work_dir", "model_name", "random_state", "pl_trainer_kwargs", "force_reset")


def model_arguments(model) -> dict:
    """``model``'s constructor arguments with every default filled in (Darts' ``model_params``)
    and, for torch models, the optimiser and schedule it resolved (TimesCLIP's defaults live
    there), minus what names the run; as JSON."""
    params = {**model.model_params, **getattr(model, "pl_module_params", {})}
    return {k: _jsonable(v) for k, v in sorted(params.items()) if k not in _RUN_ARGUMENTS}


def model_class(model) -> str:
    return f"{type(model).__module__}.{type(model).__qualname__}"


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


def digest(payload) -> str:
    """The first 16 hex digits of the sha256 of ``payload`` as canonical JSON."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def fit_key(model: str, arguments: dict, budget: Budget, dataset: str, seed: int) -> str:
    """The key of fitting ``model`` (a class, ``model_class``) with ``arguments``
    (``model_arguments``) on ``dataset`` with ``seed`` under ``budget``'s training protocol."""
    training = asdict(budget.protocol())
    return digest(
        dict(model=model, arguments=arguments, training=training, dataset=dataset, seed=seed)
    )


def scored_key(fit: str, budget: Budget) -> str:
    """The key of an accuracy run: its fit, scored on ``budget``'s test windows."""
    return digest({"fit": fit, "test_windows": budget.test_windows})


@dataclass(frozen=True)
class Built:
    """What a label builds under a budget (construction only: nothing fitted or loaded)."""

    model: str  # model_class
    arguments: dict  # model_arguments


class Catalogue:
    """The keys that ``labels`` build today under ``budget``: each label is built once (its
    arguments hold no seed and no dataset), then keyed per dataset and seed. ``scored``: the
    accuracy keys (:func:`scored_key`), else the fit keys."""

    def __init__(self, labels, budget: Budget, scored: bool) -> None:
        self.budget, self.scored = budget, scored
        with tempfile.TemporaryDirectory(prefix="benchmarks_built_") as work_dir:
            models = {label: build_model(label, 0, budget, work_dir) for label in labels}
        self.built = {
            label: Built(model_class(model), model_arguments(model))
            for label, model in models.items()
        }

    def fit(self, label: str, dataset: str, seed: int) -> str:
        built = self.built[label]
        return fit_key(built.model, built.arguments, self.budget, dataset, seed)

    def key(self, label: str, dataset: str, seed: int) -> str:
        fit = self.fit(label, dataset, seed)
        return scored_key(fit, self.budget) if self.scored else fit

    def label_of(self, run) -> str | None:
        """The label whose key for ``run``'s dataset and seed is ``run.key`` (None: none)."""
        for label in self.built:
            if self.key(label, run.dataset, run.seed) == run.key:
                return label
        return None


# ----------------------------------------------------------------------------- the results
class ResultsFileError(ValueError):
    """A results file this script cannot resume from without losing what it holds."""


def read_runs(path: Path, version: int) -> list[dict]:
    """The runs recorded in ``path`` (none if it does not exist); a file of another format
    version is refused, and so never overwritten."""
    if not path.is_file():
        return []
    report = json.loads(path.read_text())
    if report.get("format") != version:
        raise ResultsFileError(
            f"{path} has format {report.get('format')}, not {version} (another version of "
            "the benchmarks): move it away or pass another --out, so its figures are not lost"
        )
    return report["runs"]


def write_json(path: Path, payload, indent: int | None = 1) -> None:
    """Write ``payload`` to ``path`` atomically (``timesclip_darts.atomic_files``): an
    interrupted run leaves the previous file whole."""
    write_text_atomic(path, json.dumps(payload, indent=indent))


@lru_cache(maxsize=2)
def splits(dataset: str, data_dir: str | None):
    """The protocol's train/validation/test split of ``dataset``, scaled on train."""
    from timesclip_darts.data import ett_splits, load_darts_dataset

    return ett_splits(load_darts_dataset(dataset, data_dir), dataset, INPUT)


def budget_from_args(args) -> Budget:
    """The protocol's budget from the command line (both scripts' flags)."""
    return Budget(
        epochs=args.epochs,
        patience=args.patience,
        train_windows=args.train_windows,
        val_windows=args.val_windows,
        peer_schedule=args.peer_schedule,
        preset=args.preset,
    )


def run_each(function, calls: list[tuple], jobs: int, record) -> None:
    """``record(function(*call), count)`` for every call, as each finishes: ``jobs`` at a
    time, each in a fresh process (spawn: no torch state shared; one task per child: its peak
    RSS is its own) that exits when this one is killed; ``jobs == 0`` runs them in this process
    (the tests: no start-up per row, but peak RSS is then the process's so far)."""
    if calls and jobs == 0:
        for count, call in enumerate(calls, start=1):
            record(function(*call), count)
    elif calls:
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

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()
