"""The bearer token of ``serve`` and Ray's own token, without starting Ray: the token never
comes from argv and never reaches the deployments (only its SHA-256 does), the ingress checks a
presented token against that digest, and a Ray whose GCS answers calls without Ray's token is
refused unless ``--allow-open-cluster``. The real server's 401s: test_serve.py."""

from __future__ import annotations

import hashlib
import os
import socket
from concurrent import futures
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import pytest
from timesclip_export.service.config import ServeConfig

from timesclip_cli.bundle_commands import read_token_file, serve_token
from timesclip_cli.errors import UsageError
from timesclip_cli.main import main

TOKEN = "s3cret-token-value"
DIGEST = hashlib.sha256(TOKEN.encode()).hexdigest()


def _token_file(folder: Path, text: str, mode: int = 0o600) -> Path:
    path = folder / "token"
    path.write_text(text)
    os.chmod(path, mode)
    return path


# ------------------------------------------------------------------------------ the CLI
@pytest.mark.parametrize("argv", [["--token", TOKEN], [f"--token={TOKEN}"]])
def test_a_token_in_argv_is_refused_in_one_line(argv: list[str], capsys) -> None:
    assert main(["serve", "no-bundle", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: --token is refused")
    assert "$TIMESCLIP_SERVE_TOKEN" in err and "--token-file PATH" in err
    assert TOKEN not in err


def test_an_unusable_token_file_is_one_line_before_ray_starts(tmp_path: Path, capsys) -> None:
    missing = tmp_path / "absent"
    assert main(["serve", "no-bundle", "--token-file", str(missing)]) == 1
    err = capsys.readouterr().err
    assert err == f"error: --token-file {missing}: No such file or directory\n"


def test_the_token_comes_from_the_environment_or_a_file(tmp_path: Path) -> None:
    assert serve_token(None, None, TOKEN) == TOKEN
    assert serve_token(None, None, "") is None  # an empty variable is no token
    assert serve_token(None, None, None) is None
    path = _token_file(tmp_path, f"  {TOKEN}  \nsecond line\n")
    assert serve_token(None, str(path), None) == TOKEN
    with pytest.raises(UsageError, match="not both"):
        serve_token(None, str(path), TOKEN)
    with pytest.raises(UsageError, match="--token is refused"):
        serve_token(TOKEN, None, None)


@pytest.mark.parametrize(
    ("text", "mode", "message"),
    [
        ("\n", 0o600, "the first line is empty"),
        ("", 0o400, "the first line is empty"),
        (TOKEN, 0o644, "open to its group or others \\(mode 644\\): chmod 600"),
        (TOKEN, 0o620, "mode 620"),
        (TOKEN, 0o000, "Permission denied"),
    ],
)
def test_a_bad_token_file_is_refused(tmp_path: Path, text: str, mode: int, message: str) -> None:
    path = _token_file(tmp_path, text, mode)
    if mode == 0o000 and os.access(path, os.R_OK):
        pytest.skip("running as root: every file is readable")
    with pytest.raises(ValueError, match=message):
        read_token_file(str(path))


# ------------------------------------------------------------------------------ the config
def test_the_config_keeps_only_the_digest() -> None:
    config = ServeConfig(bundle="b", token=TOKEN)
    assert config.token_sha256 == DIGEST
    values = asdict(config)
    assert TOKEN not in repr(values) and "token" not in values
    assert ServeConfig(**values).token_sha256 == DIGEST  # as a replica rebuilds it
    assert ServeConfig(bundle="b").token_sha256 is None
    with pytest.raises(ValueError, match="empty"):
        ServeConfig(bundle="b", token=" ")


def test_the_deployments_get_the_digest_never_the_token() -> None:
    pytest.importorskip("ray.serve")
    import ray.cloudpickle
    from timesclip_export.service.server import build_app

    config = ServeConfig(bundle="b", shards=2, token=TOKEN)
    config.check()
    sent = ray.cloudpickle.dumps(build_app(config))  # what Ray stores and sends to replicas
    assert DIGEST.encode() in sent
    assert TOKEN.encode() not in sent


# ------------------------------------------------------------------------------ the ingress
def _request(authorization: str | None):
    from starlette.requests import Request

    headers = [] if authorization is None else [(b"authorization", authorization.encode())]
    return Request({"type": "http", "method": "GET", "path": "/v1/model", "headers": headers})


@pytest.mark.parametrize(
    ("header", "allowed"),
    [
        (f"Bearer {TOKEN}", True),
        (f"bearer {TOKEN}", True),
        (f"Bearer {DIGEST}", False),  # the digest itself is no token
        (f"Bearer {TOKEN}x", False),
        (f"Basic {TOKEN}", False),
        ("Bearer ", False),
        (None, False),
    ],
)
def test_the_ingress_checks_the_token_against_the_digest(header: str | None, allowed: bool) -> None:
    pytest.importorskip("ray.serve")
    from timesclip_export.service.api import ApiError
    from timesclip_export.service.ingress import Ingress

    replica = SimpleNamespace(_token_sha256=bytes.fromhex(DIGEST))
    if allowed:
        Ingress._authorize(replica, _request(header))
    else:
        with pytest.raises(ApiError) as refused:
            Ingress._authorize(replica, _request(header))
        assert refused.value.status == 401
    Ingress._authorize(SimpleNamespace(_token_sha256=None), _request(header))  # no token set


# ------------------------------------------------------------------------------ Ray's token
@pytest.fixture
def gcs():
    """A stand-in for a GCS's first RPC (``GetClusterId``): answers it, or refuses it as Ray
    2.60's GCS does without a token (UNAUTHENTICATED), as ``gcs.require_token`` says."""
    grpc = pytest.importorskip("grpc")
    pytest.importorskip("ray.serve")
    from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

    class NodeInfo(gcs_service_pb2_grpc.NodeInfoGcsServiceServicer):
        def GetClusterId(self, request, context):  # noqa: N802 (the RPC's name)
            if state.require_token:
                context.abort(grpc.StatusCode.UNAUTHENTICATED, "InvalidAuthToken")
            return gcs_service_pb2.GetClusterIdReply()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    gcs_service_pb2_grpc.add_NodeInfoGcsServiceServicer_to_server(NodeInfo(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    state = SimpleNamespace(address=f"127.0.0.1:{port}", require_token=True)
    try:
        yield state
    finally:
        server.stop(None)


def test_a_ray_with_token_auth_is_accepted(gcs, capsys) -> None:
    from timesclip_export.service.ray_auth import check_ray_auth, gcs_requires_token

    assert gcs_requires_token(gcs.address) is True
    check_ray_auth(gcs.address, allow_open=False)
    assert capsys.readouterr().err == ""


def test_an_open_ray_is_refused_unless_allowed(gcs, capsys) -> None:
    from timesclip_export.service.ray_auth import check_ray_auth, gcs_requires_token

    gcs.require_token = False
    assert gcs_requires_token(gcs.address) is False
    with pytest.raises(ValueError, match="without Ray's token .* or pass --allow-open-cluster"):
        check_ray_auth(gcs.address, allow_open=False)
    check_ray_auth(gcs.address, allow_open=True)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("warning: Ray at ")


def test_a_ray_that_cannot_be_probed_is_warned_about(capsys) -> None:
    pytest.importorskip("ray.serve")
    from timesclip_export.service.ray_auth import check_ray_auth, gcs_requires_token

    with socket.socket() as sock:  # a port with nothing listening
        sock.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{sock.getsockname()[1]}"
    assert gcs_requires_token(closed, timeout_s=2) is None
    check_ray_auth(closed, allow_open=False)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("warning: could not check")
