"""MLflow for the command line: ``--mlflow`` options, a run from MLflow's environment variables,
Darts' autologging for one fit, and logging models (Darts' MLflow flavor) and bundles."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from timesclip_cli.errors import UsageError
from timesclip_cli.model_files import load_model, scaler_path


def add_mlflow_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    """``--mlflow`` and ``--mlflow-register`` (``train`` and ``export``)."""
    parser.add_argument(
        "--mlflow",
        action="store_true",
        help=f"log {what} (Darts' MLflow flavor) to MLflow: the run in MLFLOW_RUN_ID, or a new "
        "one in MLFLOW_EXPERIMENT_NAME (or _ID) at MLFLOW_TRACKING_URI (needs the mlflow extra)",
    )
    parser.add_argument(
        "--mlflow-register",
        metavar="NAME",
        help="with --mlflow: also register the logged model as a new version of NAME",
    )


def check_mlflow_arguments(args: argparse.Namespace) -> None:
    """``--mlflow-register`` needs ``--mlflow``; ``--mlflow`` needs MLflow installed."""
    if args.mlflow_register and not args.mlflow:
        raise UsageError("--mlflow-register needs --mlflow")
    if args.mlflow:
        require_mlflow()


def require_mlflow():
    """The ``mlflow`` module, or a one-line error saying how to install it."""
    try:
        import mlflow
    except ImportError as err:
        raise ValueError(
            f"--mlflow needs MLflow ({err}); install it with: pip install 'timesclip-darts[mlflow]'"
        ) from None
    return mlflow


@contextmanager
def _mlflow_errors() -> Iterator[None]:
    """MLflow's own exceptions (server unreachable, bad experiment...) as one-line errors."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as err:
        first_line = str(err.message if hasattr(err, "message") else err).strip().splitlines()
        raise ValueError(f"MLflow: {first_line[0] if first_line else type(err).__name__}") from err


@contextmanager
def mlflow_run(enabled: bool) -> Iterator[object | None]:
    """The active MLflow run, or one started here from MLflow's environment variables
    (``MLFLOW_TRACKING_URI``, ``MLFLOW_RUN_ID`` to resume a run, ``MLFLOW_EXPERIMENT_NAME`` or
    ``_ID``) and ended when the block ends (FAILED on an error); ``None`` when not enabled."""
    if not enabled:
        yield None
        return
    mlflow = require_mlflow()
    with _mlflow_errors():
        active = mlflow.active_run()
        run = active if active is not None else mlflow.start_run()
    if active is not None:  # someone else's run (a script calling main()): leave it open
        yield run
        return
    status = "FAILED"
    try:
        yield run
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        with _mlflow_errors():
            mlflow.end_run(status)


@contextmanager
def darts_autolog(enabled: bool) -> Iterator[None]:
    """Darts' MLflow autologging (parameters, series info, per-epoch losses) for one fit."""
    if not enabled:
        yield
        return
    from darts.utils.mlflow import autolog

    autolog(log_models=False, silent=True)
    try:
        yield
    finally:
        autolog(disable=True, silent=True)


def log_model_to_mlflow(model, model_path: str | Path, register: str | None = None) -> str:
    """Log ``model`` to the active run with Darts' MLflow flavor (``darts.utils.mlflow``;
    ``load_model(uri)`` gives it back) and its scaler JSON, if any, as the run artifact
    ``scaler/``. Returns a line saying where it went."""
    import mlflow
    from darts.utils.mlflow import log_model

    with _mlflow_errors():
        info = log_model(
            model,
            name="model",
            registered_model_name=register,
            extra_pip_requirements=mlflow_pip_requirements(),
        )
        scaler = scaler_path(model_path)
        if scaler.is_file():
            mlflow.log_artifact(str(scaler), artifact_path="scaler")
    registered = f", registered as {register} v{info.registered_model_version}" if register else ""
    return f"mlflow: logged the model to run {info.run_id} as {info.model_uri}{registered}"


def mlflow_pip_requirements() -> list[str]:
    """What a logged model needs beyond Darts' own pin (the flavor's default): this package,
    whose class the flavor imports at load, pinned to the version that saved it."""
    from importlib.metadata import version

    return [f"timesclip-darts=={version('timesclip-darts')}"]


def log_bundle_to_mlflow(
    model_path: str | Path, bundle: str | Path, register: str | None = None
) -> list[str]:
    """Log an exported bundle folder to the active (or a new) run as the artifact ``bundle/``,
    and the model it came from with Darts' flavor unless the run has a model already (from
    ``train --mlflow``; then ``register`` registers that one). Returns lines to print."""
    mlflow = require_mlflow()
    lines = []
    with mlflow_run(True) as run, _mlflow_errors():
        mlflow.log_artifacts(str(bundle), artifact_path="bundle")
        lines.append(f"mlflow: logged the bundle to run {run.info.run_id} as artifact bundle/")
        outputs = mlflow.get_run(run.info.run_id).outputs
        logged = [m.model_id for m in (outputs.model_outputs if outputs else [])]
        if not logged:
            lines.append(log_model_to_mlflow(load_model(model_path), model_path, register))
        elif register:
            version = mlflow.register_model(f"models:/{logged[0]}", register)
            lines.append(
                f"mlflow: registered the run's model models:/{logged[0]} as {register} "
                f"v{version.version}"
            )
    return lines
