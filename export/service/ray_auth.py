"""Whether the Ray that ``timesclip-darts serve`` runs on demands Ray's own token
(``RAY_AUTH_MODE=token``). A Ray whose GCS answers a call that carries no token is open to anyone
who reaches its ports: the shards' handles, the jobs API and every worker (remote code
execution). The bearer token of the HTTP API guards HTTP only."""

from __future__ import annotations

import sys

import grpc
from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

PROBE_TIMEOUT_S = 10.0


def gcs_requires_token(gcs_address: str, timeout_s: float = PROBE_TIMEOUT_S) -> bool | None:
    """True when the GCS at ``gcs_address`` refuses a call without a token (``UNAUTHENTICATED``),
    False when it answers it, None when the call fails otherwise (unreachable, or Ray's TLS)."""
    with grpc.insecure_channel(gcs_address) as channel:
        stub = gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel)
        try:
            stub.GetClusterId(gcs_service_pb2.GetClusterIdRequest(), timeout=timeout_s)
        except grpc.RpcError as err:
            return True if err.code() == grpc.StatusCode.UNAUTHENTICATED else None
    return False


def check_ray_auth(gcs_address: str, allow_open: bool) -> None:
    """Refuse a Ray without token authentication (a ``ValueError``) unless ``allow_open``, when
    it is only warned about; warn when it cannot be checked."""
    required = gcs_requires_token(gcs_address)
    if required:
        return
    if required is None:
        print(
            f"warning: could not check whether Ray at {gcs_address} requires Ray's token "
            "(RAY_AUTH_MODE=token); see docs/serving.md#auth-and-exposure",
            file=sys.stderr,
            flush=True,
        )
        return
    problem = (
        f"Ray at {gcs_address} answers calls without Ray's token (its nodes were started "
        "without RAY_AUTH_MODE=token): anyone who reaches its ports can run code on it"
    )
    if not allow_open:
        raise ValueError(
            f"{problem}; start every node with token authentication "
            "(docs/serving.md#a-cluster) or pass --allow-open-cluster"
        )
    print(f"warning: {problem} (--allow-open-cluster)", file=sys.stderr, flush=True)
