"""TimesCLIPModel with Darts' MLflow flavor (``darts.utils.mlflow``) and ``train``/``export
--mlflow``, against a real MLflow tracking server (SQLite backend, local artifact store) that
this module starts on 127.0.0.1 and stops at the end."""

from __future__ import annotations

import filecmp
import importlib.metadata
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from darts.utils.mlflow import autolog, load_model, log_model
from mlflow import MlflowClient

from tests.conftest import etth1_series, tiny_timesclip
from timesclip_cli.main import main
from timesclip_cli.mlflow_logging import log_bundle_to_mlflow
from timesclip_darts import TimesCLIPModel

pytestmark = pytest.mark.integration  # a real MLflow tracking server

ICL, OCL = 48, 12
CLI_MODEL_ARGS = [
    "--input-chunk-length",
    str(ICL),
    "--output-chunk-length",
    str(OCL),
    "--clip-model",
    "tiny",
    "--d-model",
    "32",
    "--epochs",
    "1",
    "--max-train-windows",
    "32",
    "--val-fraction",
    "0.2",
]
SERVER_START_S = 180


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory):
    """``mlflow server`` on 127.0.0.1 with a SQLite store; MLFLOW_TRACKING_URI points at it."""
    folder = tmp_path_factory.mktemp("mlflow")
    port = _free_port()
    uri = f"http://127.0.0.1:{port}"
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
    command = [
        str(Path(sys.executable).with_name("mlflow")),
        "server",
        "--backend-store-uri",
        f"sqlite:///{folder / 'mlflow.db'}",
        "--artifacts-destination",
        str(folder / "artifacts"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    log = open(folder / "server.log", "wb")  # noqa: SIM115
    # Its own process group: the server's uvicorn worker and job runner stop with it.
    server = subprocess.Popen(
        command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
    )
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            if server.poll() is not None:
                pytest.fail(f"mlflow server exited: {(folder / 'server.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"mlflow server not up after {SERVER_START_S} s")
            time.sleep(0.5)
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("MLFLOW_TRACKING_URI", uri)
            patch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
            patch.delenv("MLFLOW_RUN_ID", raising=False)
            yield uri
    finally:
        while mlflow.active_run() is not None:
            mlflow.end_run()
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


# ------------------------------------------------------------------ the flavor, from Python
@pytest.fixture(scope="module")
def autologged(tracking_uri: str):
    """A TimesCLIPModel fitted under Darts' autolog (models logged too): (model, run id,
    series). Experiments go by id: ``set_experiment`` would outlast the fixture in this
    process and override ``MLFLOW_EXPERIMENT_NAME`` for the command-line tests."""
    experiment = MlflowClient().create_experiment("flavor")
    series = etth1_series(0, 400)[["OT", "HUFL"]]
    autolog(log_models=True)
    try:
        with mlflow.start_run(experiment_id=experiment) as run:
            model = tiny_timesclip(ICL, OCL, batch_size=16)
            model.fit(series[:300], val_series=series[300 - ICL :], max_samples_per_ts=32)
    finally:
        autolog(disable=True)
    return model, run.info.run_id, series


def test_autolog_logs_the_fits_parameters_and_losses(autologged) -> None:
    _, run_id, _ = autologged
    run = mlflow.get_run(run_id)
    params = run.data.params
    assert params["input_chunk_length"] == str(ICL) and params["output_chunk_length"] == str(OCL)
    assert params["clip_model_name"] == "tiny" and params["d_model"] == "32"
    assert {"train_loss", "val_loss", "train_alignment_loss"} <= set(run.data.metrics)
    assert run.data.tags["model_class"] == "TimesCLIPModel"
    assert len(run.outputs.model_outputs) == 1


def test_the_autologged_model_loads_back_with_identical_forecasts(autologged) -> None:
    model, run_id, series = autologged
    (output,) = mlflow.get_run(run_id).outputs.model_outputs
    loaded = load_model(f"models:/{output.model_id}")
    assert isinstance(loaded, TimesCLIPModel) and loaded is not model
    expected = model.predict(OCL, series=series, verbose=False)
    got = loaded.predict(OCL, series=series, verbose=False)
    assert got.time_index.equals(expected.time_index)
    np.testing.assert_array_equal(got.values(), expected.values())


def test_log_model_registers_a_version_that_loads_back(autologged) -> None:
    model, run_id, series = autologged
    with mlflow.start_run(experiment_id=mlflow.get_run(run_id).info.experiment_id):
        info = log_model(model, name="model", registered_model_name="timesclip-flavor")
    versions = MlflowClient().search_model_versions("name='timesclip-flavor'")
    assert [v.version for v in versions] == ["1"] and versions[0].source == info.model_uri
    loaded = load_model("models:/timesclip-flavor/1")
    np.testing.assert_array_equal(
        loaded.predict(OCL, series=series, verbose=False).values(),
        model.predict(OCL, series=series, verbose=False).values(),
    )


# ------------------------------------------------------------------- the command line
@pytest.fixture(scope="module")
def csv_path(etth1: pd.DataFrame, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "etth1_part.csv"
    etth1.iloc[:400, [0, 1, 7]].to_csv(path, index=False)  # date, HUFL, OT
    return path


@pytest.fixture(scope="module")
def cli_trained(tracking_uri: str, csv_path: Path, tmp_path_factory) -> tuple[Path, str, str]:
    """``train --mlflow --mlflow-register``: (model path, run id, what it printed)."""
    model = tmp_path_factory.mktemp("cli") / "model.pt"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_EXPERIMENT_NAME", "cli")
        args = ["train", "--csv", str(csv_path), "--model-out", str(model), *CLI_MODEL_ARGS]
        out = _run_main([*args, "--mlflow", "--mlflow-register", "timesclip-cli"])
    run_id = re.search(r"logged the model to run (\w+)", out).group(1)
    return model, run_id, out


def _run_main(args: list[str]) -> str:
    import contextlib
    import io

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        assert main(args) == 0
    return buffer.getvalue()


def test_train_logs_parameters_losses_model_and_scaler(cli_trained, csv_path: Path) -> None:
    model_path, run_id, out = cli_trained
    run = mlflow.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert mlflow.get_experiment(run.info.experiment_id).name == "cli"
    assert run.data.params["input_chunk_length"] == str(ICL)
    assert {"train_loss", "val_loss"} <= set(run.data.metrics)
    artifacts = [a.path for a in MlflowClient().list_artifacts(run_id, "scaler")]
    assert artifacts == ["scaler/model.pt.scaler.json"]
    assert "registered as timesclip-cli v1" in out
    # Its environment names this package (the flavor alone pins only darts): a serving host
    # built from requirements.txt can import the class the flavor loads.
    logged = Path(mlflow.artifacts.download_artifacts(artifact_uri="models:/timesclip-cli/1"))
    requirements = (logged / "requirements.txt").read_text().split()
    assert any(r.startswith("darts==") for r in requirements)
    assert f"timesclip-darts=={importlib.metadata.version('timesclip-darts')}" in requirements
    # The registered model forecasts exactly as the file `train` saved.
    series = TimesCLIPModel.load(str(model_path))
    data = etth1_series(0, 400)[["HUFL", "OT"]]
    np.testing.assert_array_equal(
        load_model("models:/timesclip-cli/1").predict(OCL, series=data, verbose=False).values(),
        series.predict(OCL, series=data, verbose=False).values(),
    )


def test_export_logs_the_bundle_and_the_model_to_a_new_run(
    cli_trained, tmp_path: Path, monkeypatch
) -> None:
    model_path, train_run, _ = cli_trained
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "cli")
    bundle = tmp_path / "bundle"
    args = ["export", str(model_path), str(bundle), "--no-optimize", "--mlflow"]
    out = _run_main([*args, "--mlflow-register", "timesclip-cli"])
    run_id = re.search(r"logged the bundle to run (\w+)", out).group(1)
    assert run_id != train_run and mlflow.get_run(run_id).info.status == "FINISHED"
    downloaded = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="bundle"))
    local = sorted(p.name for p in bundle.iterdir())
    assert sorted(p.name for p in downloaded.iterdir()) == local and "manifest.json" in local
    assert filecmp.cmpfiles(bundle, downloaded, local, shallow=False)[0] == local
    # No model in this run yet: the exported one is logged (loaded from its file) and
    # registered as the name's second version.
    (output,) = mlflow.get_run(run_id).outputs.model_outputs
    assert "registered as timesclip-cli v2" in out
    data = etth1_series(0, 400)[["HUFL", "OT"]]
    np.testing.assert_array_equal(
        load_model(f"models:/{output.model_id}").predict(OCL, series=data, verbose=False).values(),
        TimesCLIPModel.load(str(model_path)).predict(OCL, series=data, verbose=False).values(),
    )


def test_export_into_the_training_run_keeps_its_model(
    cli_trained, tmp_path: Path, monkeypatch
) -> None:
    """With MLFLOW_RUN_ID (export after `train --mlflow`), the bundle joins the run and the
    run's model is registered, not logged twice. A stand-in folder keeps this test fast."""
    model_path, run_id, _ = cli_trained
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "manifest.json").write_text("{}")
    monkeypatch.setenv("MLFLOW_RUN_ID", run_id)
    lines = log_bundle_to_mlflow(model_path, bundle, register="timesclip-resumed")
    assert lines[0] == f"mlflow: logged the bundle to run {run_id} as artifact bundle/"
    run = mlflow.get_run(run_id)
    (output,) = run.outputs.model_outputs
    assert lines[1].endswith(f"models:/{output.model_id} as timesclip-resumed v1")
    assert [a.path for a in MlflowClient().list_artifacts(run_id, "bundle")] == [
        "bundle/manifest.json"
    ]
    assert run.info.status == "FINISHED"


def test_register_without_mlflow_is_a_usage_error(csv_path: Path, tmp_path: Path, capsys) -> None:
    args = ["train", "--csv", str(csv_path), "--model-out", str(tmp_path / "m.pt")]
    assert main([*args, "--mlflow-register", "x"]) == 2
    err = capsys.readouterr().err
    assert err == "error: --mlflow-register needs --mlflow\n"
    assert not (tmp_path / "m.pt").exists()
