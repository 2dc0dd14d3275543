"""Nothing leaks: the API key, document content and presigned URLs never appear in anything
the exporter produces, even while things go wrong; /metrics basic auth and TLS at the CLI.

Everything the exporter produces during a run full of faults is collected and grepped: its
log (debug level, stdout and stderr), /metrics in both formats, the bytes the OTLP receiver
got, the output of `check` and `once` (failing ones included) and the state file."""

from __future__ import annotations

import base64
import ssl
import time
import warnings
from pathlib import Path

import httpx
from fault_helpers import otlp_env
from otlp_receiver import HttpReceiver
from processes import ExporterProcess, run_command, wait_until
from test_server import _self_signed

from exporter.simulator import CONTENT_MARKER, URL_MARKER, Simulator, SimulatorConfig, SimulatorServer

API_KEY = "bemkey-Zq8SECRETw3Xv"
VENDOR_KEY = "vendor-ingest-K9SECRETpL"
PASSWORD = "scrape-pw-SECRET-4471"


def _run(command: str, url: str, state: Path, **env: str) -> str:
    result = run_command(command, url, state, **{"BEM_API_KEY": API_KEY, **env})
    return f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"


def _leaks(name: str, data: bytes) -> list[str]:
    found = []
    for secret in (API_KEY, VENDOR_KEY, CONTENT_MARKER, URL_MARKER, PASSWORD):
        if secret.encode() in data:
            found.append(f"{secret!r} in {name}")
    if b"Traceback" in data:
        found.append(f"a traceback in {name}")
    return found


def test_no_key_content_or_url_in_anything_produced_during_faults(tmp_path: Path) -> None:
    simulator = Simulator(
        SimulatorConfig(prefill=300, history=900.0, arrival_rate=10.0, speed=20.0, seed=71, api_key=API_KEY)
    )
    faults = simulator.config.faults
    produced: dict[str, bytes] = {}
    state = tmp_path / "state.sqlite"
    with SimulatorServer(simulator) as url, HttpReceiver() as receiver:
        env = {
            **otlp_env(receiver, timeout_ms=1000),
            "OTEL_EXPORTER_OTLP_HEADERS": f"x-api-key={VENDOR_KEY}",
            "BEM_LOG_LEVEL": "debug",
            "BEM_API_KEY": API_KEY,
            "BEM_API_TIMEOUT": "1s",
        }
        exporter = ExporterProcess(url, state, env=env)
        try:
            exporter.start()
            # A run of every fault, one after the other, with the trace backend failing too.
            for fault, value in [
                ("rate_429", 0.5),
                ("rate_5xx", 0.5),
                ("truncated_rate", 0.5),
                ("malformed_rate", 0.3),
                ("slow_rate", 0.5),
            ]:
                setattr(faults, fault, value)
                if fault == "slow_rate":
                    faults.slow_seconds = 2.0
                produced[f"/metrics during {fault}"] = exporter.metrics(openmetrics=True).encode()
                time.sleep(1.0)
                setattr(faults, fault, 0.0)
            receiver.set_down()
            faults.down = True
            time.sleep(3.0)
            produced["/metrics while down"] = exporter.metrics().encode()
            faults.down = False
            receiver.set_down(False)
            simulator.config.arrival_rate = 0.0
            # The 429 second near the start leaves the adaptive rate about where it came (5/s):
            # a limit found is probed past slowly, so 500 spans take up to a minute to come.
            wait_until(lambda: len(receiver.spans()) > 500, 90, what="spans")
            produced["/metrics"] = exporter.metrics().encode()
            produced["/metrics (OpenMetrics)"] = exporter.metrics(openmetrics=True).encode()
        finally:
            exporter.stop()
        produced["exporter log"] = exporter.log().encode()
        produced["OTLP requests"] = receiver.raw_bytes()
        produced["state file"] = b"".join(p.read_bytes() for p in tmp_path.glob("state.sqlite*") if p.is_file())
        # One-shot commands, healthy and failing (wrong key, API down, OTLP unreachable).
        other = tmp_path / "other.sqlite"
        outputs = {
            "check": _run("check", url, other, OTEL_TRACES_EXPORTER="otlp", OTEL_EXPORTER_OTLP_ENDPOINT=url),
            "check with OTLP unreachable": _run(
                "check", url, other, OTEL_TRACES_EXPORTER="otlp", OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:9"
            ),
            "once": _run("once", url, other, **otlp_env(receiver), BEM_LOG_LEVEL="debug"),
            "once with a wrong key": _run("once", url, tmp_path / "x.sqlite", BEM_API_KEY=API_KEY[::-1]),
            "check with a wrong key": _run("check", url, other, BEM_API_KEY=API_KEY[::-1]),
        }
        faults.down = True
        outputs["once with the API down"] = _run("once", url, tmp_path / "y.sqlite", BEM_API_TIMEOUT="1s")
        outputs["check with the API down"] = _run("check", url, other, BEM_API_TIMEOUT="1s")
        faults.down = False
    outputs["check with the API gone"] = _run("check", "http://127.0.0.1:9", other)
    produced.update({name: text.encode() for name, text in outputs.items()})
    assert "exit 0" in outputs["check"] and "exit 0" in outputs["once"]
    assert "exit 1" in outputs["once with a wrong key"] and "API key was rejected" in outputs["once with a wrong key"]
    # The reversed key must not appear either (a wrong key is still a key).
    leaks = [leak for name, data in produced.items() for leak in _leaks(name, data)]
    leaks += [f"reversed key in {name}" for name, data in produced.items() if API_KEY[::-1].encode() in data]
    assert not leaks, leaks
    assert len(receiver.spans()) > 500  # the spans went out; they just carry nothing secret
    assert b"x-api-key" not in produced["exporter log"]


def test_metrics_basic_auth_and_tls_at_the_cli(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    auth_file = tmp_path / "metrics-auth"
    auth_file.write_text(f"prometheus:{PASSWORD}\n")
    trust = ssl.create_default_context(cafile=cert)
    simulator = Simulator(SimulatorConfig(prefill=50, history=600.0, arrival_rate=0.0, seed=72))
    with SimulatorServer(simulator) as url:
        exporter = ExporterProcess(
            url,
            tmp_path / "state.sqlite",
            env={"BEM_METRICS_BASIC_AUTH_FILE": str(auth_file), "BEM_TLS_CERT_FILE": cert, "BEM_TLS_KEY_FILE": key},
        )
        https = exporter.url.replace("http://", "https://")
        try:
            exporter.start(ready=False)
            with httpx.Client(verify=trust, timeout=5) as client:
                wait_until(lambda: client.get(f"{https}/readyz").status_code == 200, 30, what="ready over HTTPS")
                # Probes stay open; /metrics wants the credentials.
                assert client.get(f"{https}/healthz").status_code == 200
                anonymous = client.get(f"{https}/metrics")
                assert anonymous.status_code == 401
                assert anonymous.headers["www-authenticate"].startswith("Basic")
                assert "bem_" not in anonymous.text
                wrong = client.get(f"{https}/metrics", auth=("prometheus", PASSWORD + "x"))
                assert wrong.status_code == 401
                wrong_user = client.get(f"{https}/metrics", auth=("admin", PASSWORD))
                assert wrong_user.status_code == 401
                garbage = client.get(f"{https}/metrics", headers={"Authorization": "Basic !!notbase64"})
                assert garbage.status_code == 401
                right = client.get(f"{https}/metrics", auth=("prometheus", PASSWORD))
                assert right.status_code == 200 and "bem_calls_total" in right.text
                token = base64.b64encode(f"prometheus:{PASSWORD}".encode()).decode()
                assert client.get(f"{https}/metrics", headers={"Authorization": f"basic {token}"}).status_code == 200
            # Only HTTPS: plain HTTP gets no answer, and an untrusting client refuses the certificate.
            try:
                plain = httpx.get(f"{exporter.url}/healthz", timeout=5)
            except httpx.HTTPError:
                pass
            else:
                raise AssertionError(f"plain HTTP answered {plain.status_code}")
            try:
                httpx.get(f"{https}/healthz", timeout=5)
            except httpx.ConnectError:
                pass
            else:
                raise AssertionError("a client that does not trust the certificate connected")
            # TLS 1.2 or later only.
            old = ssl.create_default_context(cafile=cert)
            with warnings.catch_warnings():  # the old versions are deprecated: that is the point
                warnings.simplefilter("ignore", DeprecationWarning)
                old.minimum_version = ssl.TLSVersion.TLSv1
                old.maximum_version = ssl.TLSVersion.TLSv1_1
            try:
                httpx.get(f"{https}/healthz", verify=old, timeout=5)
            except httpx.ConnectError:
                pass
            else:
                raise AssertionError("TLS 1.1 was accepted")
        finally:
            if exporter.process is not None:
                exporter.stop()
    log = exporter.log()
    assert PASSWORD not in log and API_KEY not in log
    assert "https://" in log  # the startup line names the HTTPS URL
