"""Every way the Kubernetes API or a kubeconfig can fail ends a CLI command with one `error:` line
naming what is wrong and exit 1, never a traceback: the lab API server made to fail as a real one
does (401, 403 with the verb and resource, 404, 410, 500, a stall), a server that refuses, TLS
against a plain server, and kubeconfigs that are missing or not YAML."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import urllib3.exceptions as u3

from controller.agent import api_errors
from controller.cli import main
from controller.debug import inputs
from controller.lab.apiserver import Fault, ServerThread, kubeconfig_text, serve_tcp
from controller.lab.store import ApiError, Store

FORBIDDEN = (
    'networkpolicies.networking.k8s.io is forbidden: User "system:serviceaccount:dev:ci" cannot list '
    'resource "networkpolicies" in API group "networking.k8s.io" at the cluster scope'
)


@pytest.fixture
def lab_api() -> Iterator[ServerThread]:
    thread = serve_tcp(Store(window=50))
    try:
        yield thread
    finally:
        thread.stop()


def kubeconfig_for(tmp_path: Path, url: str) -> Path:
    path = tmp_path / "kubeconfig"
    path.write_text(kubeconfig_text(url))
    return path


def url_of(thread: ServerThread, scheme: str = "http") -> str:
    address: Any = thread.server.server_address
    return f"{scheme}://{address[0]}:{address[1]}"


def cli_error(capsys: pytest.CaptureFixture[str], kubeconfig: Path, *args: str) -> tuple[int, str]:
    capsys.readouterr()
    rc = main([*(args or ("get", "netpol", "-A")), "--kubeconfig", str(kubeconfig)])
    err = capsys.readouterr().err
    return rc, err


def on_path(part: str, error: ApiError) -> Fault:
    return lambda method, path: error if part in path else None


@pytest.mark.parametrize(
    ("fault", "expect"),
    [
        (
            on_path("/api", ApiError(401, "Unauthorized", "Unauthorized")),
            "answered 401 Unauthorized: Unauthorized (the kubeconfig's credentials were not accepted",
        ),
        (
            on_path("networkpolicies", ApiError(403, "Forbidden", FORBIDDEN)),
            'answered 403 Forbidden: networkpolicies.networking.k8s.io is forbidden: User "system:'
            'serviceaccount:dev:ci" cannot list resource "networkpolicies"',
        ),
        (
            on_path(
                "/api/v1/pods", ApiError(404, "NotFound", "the server could not find the requested resource")
            ),
            "answered 404 Not Found: the server could not find the requested resource (the resource",
        ),
        (on_path("/api/v1/nodes", ApiError(410, "Expired", "too old resource version")), "answered 410"),
        (on_path("namespaces", ApiError(500, "InternalError", "etcdserver: leader changed")), "etcdserver"),
    ],
    ids=["401", "403", "404", "410", "500"],
)
def test_an_api_server_error_is_one_line_naming_the_status_and_what_to_check(
    lab_api: ServerThread,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    fault: Fault,
    expect: str,
) -> None:
    lab_api.server.fault = fault
    rc, err = cli_error(capsys, kubeconfig_for(tmp_path, url_of(lab_api)))
    assert rc == 1 and err.count("\n") == 1 and err.startswith("error: the API server "), err
    assert expect in err and "Traceback" not in err


def test_a_stalled_api_server_is_a_timeout_not_a_hang(
    lab_api: ServerThread, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def stall(method: str, path: str) -> None:
        time.sleep(2.0)

    monkeypatch.setattr(inputs, "REQUEST_TIMEOUT", 0.3)
    lab_api.server.fault = stall
    started = time.monotonic()
    rc, err = cli_error(capsys, kubeconfig_for(tmp_path, url_of(lab_api)))
    assert rc == 1 and err == f"error: the API server at {url_of(lab_api)} did not answer in time\n"
    assert time.monotonic() - started < 2.0


def test_a_server_that_refuses_connections_is_named_with_its_address(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as s:  # a port nothing listens on once closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rc, err = cli_error(capsys, kubeconfig_for(tmp_path, f"http://127.0.0.1:{port}"))
    assert (
        rc == 1
        and err
        == f"error: cannot reach the API server at http://127.0.0.1:{port}: [Errno 111] Connection refused\n"
    )


def test_tls_against_a_plain_server_says_tls_failed(
    lab_api: ServerThread, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, err = cli_error(capsys, kubeconfig_for(tmp_path, url_of(lab_api, "https")))
    assert rc == 1 and err.startswith("error: TLS with the API server failed: [SSL: WRONG_VERSION_NUMBER]"), (
        err
    )
    assert err.count("\n") == 1


@pytest.mark.parametrize(
    ("text", "expect"),
    [
        (
            "apiVersion: v1\nclusters: [\n",
            "cannot load Kubernetes configuration ({path}): while parsing a flow node",
        ),
        (None, "cannot load Kubernetes configuration ({path}): Invalid kube-config file"),
        (
            "apiVersion: v1\nkind: Config\n",
            "cannot load Kubernetes configuration ({path}): Invalid kube-config file",
        ),
    ],
    ids=["not-yaml", "missing", "empty-config"],
)
def test_a_bad_kubeconfig_is_one_line_naming_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str | None, expect: str
) -> None:
    path = tmp_path / "kubeconfig"
    if text is not None:
        path.write_text(text)
    rc, err = cli_error(capsys, path)
    assert rc == 1 and err.startswith("error: " + expect.format(path=path)) and err.count("\n") == 1, err


@pytest.mark.parametrize(
    ("make", "expect"),
    [
        (
            lambda: u3.MaxRetryError(
                None,  # type: ignore[arg-type]
                "/api",
                u3.NameResolutionError("api.example", None, socket.gaierror(-2, "Name or service not known")),  # type: ignore[arg-type]
            ),
            "cannot reach the API server at the API server: its name does not resolve",
        ),
        (
            lambda: u3.ProtocolError("Connection aborted.", ConnectionResetError()),
            "broke: Connection aborted.",
        ),
        (lambda: RuntimeError("a bug"), None),
    ],
    ids=["dns", "reset", "not-an-api-failure"],
)
def test_transport_failures_without_a_server_are_described_and_bugs_are_not(
    make: Callable[[], BaseException], expect: str | None
) -> None:
    line = api_errors.describe(make())
    assert (line is None) if expect is None else (line is not None and expect in line), line
