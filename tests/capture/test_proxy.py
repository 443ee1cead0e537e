"""A real DB-less LiteLLM proxy loading the capture from the callback file `capture-callback` writes.

Covers what only the proxy has: config loading of the callback (LiteLLM 1.82.3 loads it only
from a file beside config.yaml), the native /v1/messages route, a generic pass-through route
(call_type pass_through_endpoint) and the flush when the proxy is stopped with SIGTERM.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from tests import services
from tests.capture import helpers
from tests.capture.conftest import insert_spend_row
from tests.capture.upstreams import MockUpstream

pytestmark = pytest.mark.capture
MASTER_KEY = "sk-ttft-test-1234"

PROBE = '''
import json, os
from litellm.integrations.custom_logger import CustomLogger
from litellm.proxy.spend_tracking.spend_tracking_utils import get_logging_payload


class SpendProbe(CustomLogger):
    async def async_log_success_event(self, kwargs, response_obj, start_time, end_time):
        row = dict(get_logging_payload(kwargs, response_obj, start_time, end_time))
        row["_call_id"] = kwargs.get("litellm_call_id")
        with open(os.environ["TTFT_TEST_SPEND_FILE"], "a") as out:
            out.write(json.dumps(row, default=lambda o: o.isoformat() if hasattr(o, "isoformat") else str(o)) + "\\n")


probe = SpendProbe()
'''


def config(upstream: MockUpstream) -> str:
    return f"""model_list:
  - model_name: claude-mock
    litellm_params:
      model: anthropic/claude-sonnet-4-5-20250929
      api_base: {upstream.base}
      api_key: x
general_settings:
  master_key: {MASTER_KEY}
  pass_through_endpoints:
    - path: "/mock-anthropic"
      target: "{upstream.base}/v1/messages"
      headers: {{}}
litellm_settings:
  callbacks: ["ttft_capture.capture", "spend_probe.probe"]
"""


@pytest.fixture
def proxy(litellm: Any, upstream: MockUpstream, db_url: str, tmp_path: Path) -> Iterator[dict[str, Any]]:
    from ttft_reconcile.cli import cli

    (tmp_path / "config.yaml").write_text(config(upstream))
    result = CliRunner().invoke(cli, ["capture-callback", "--config", str(tmp_path / "config.yaml")])
    assert result.exit_code == 0, result.output
    (tmp_path / "spend_probe.py").write_text(PROBE)
    import httpx

    port = services.free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "TTFT_CAPTURE_DATABASE_URL")}
    env.update(TTFT_CAPTURE_DATABASE_URL=db_url, TTFT_CAPTURE_FLUSH_INTERVAL="0.2",
               TTFT_TEST_SPEND_FILE=str(tmp_path / "spend.jsonl"), LITELLM_LOCAL_MODEL_COST_MAP="True",
               LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY="true", AWS_EC2_METADATA_DISABLED="true",
               NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")
    log = open(tmp_path / "proxy.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "litellm"), "--config", str(tmp_path / "config.yaml"),
         "--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"],
        cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            try:
                if httpx.get(base + "/health/liveliness", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        if proc.poll() is not None or time.monotonic() >= deadline:
            text = (tmp_path / "proxy.log").read_text()[-3000:]
            services.missing(f"the LiteLLM proxy did not start: {text}")
        yield {"base": base, "proc": proc, "dir": tmp_path}
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
        log.close()


def stream(base: str, route: str, model: str | None) -> bytes:
    import httpx  # LiteLLM's dependency: present in capture venvs only

    body: dict[str, Any] = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 30, "stream": True}
    if model:
        body["model"] = model
    headers = {"Authorization": f"Bearer {MASTER_KEY}", "anthropic-version": "2023-06-01"}
    out = b""
    with httpx.stream("POST", base + route, json=body, headers=headers, timeout=30) as response:
        assert response.status_code == 200, response.read()[:500]
        for chunk in response.iter_raw():
            out += chunk
    return out


def wait_for(db_url: str, n: int, timeout: float = 15.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        found = helpers.traces(db_url)
        if len(found) >= n or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def test_proxy_native_and_pass_through_routes(proxy: dict[str, Any], upstream: MockUpstream, db_url: str) -> None:
    native = stream(proxy["base"], "/v1/messages", "claude-mock")
    assert b"message_stop" in native
    generic = stream(proxy["base"], "/mock-anthropic", "claude-sonnet-4-5-20250929")
    assert b"message_stop" in generic
    traces = wait_for(db_url, 2)
    by_route = {t["route"]: t for t in traces}
    assert set(by_route) == {"/v1/messages", "/mock-anthropic"}, traces
    assert by_route["/v1/messages"]["call_type"] == "anthropic_messages"
    assert by_route["/mock-anthropic"]["call_type"] == "pass_through_endpoint"
    sent = dict(zip(("/v1/messages", "/mock-anthropic"), (s.sent_at for s in upstream.served[-2:]), strict=True))
    for trace in traces:
        gap = helpers.ms_between(trace["first_visible_at"], trace["first_chunk_at"])
        late = helpers.ms_between(trace["first_chunk_at"], helpers.utc(sent[trace["route"]][0]))
        print(f"\nproxy {trace['route']}: first_chunk - server first send = {late:.1f} ms, "
              f"first_visible - first_chunk = {gap:.1f} ms, chunks {trace['chunk_count']}")
        assert trace["outcome"] == "completed" and trace["first_visible_at"] >= trace["first_chunk_at"]
        assert late >= -2.0

    # the proxy's own SpendLogs rows (as get_logging_payload builds them) join the traces
    time.sleep(1.0)
    rows = [json.loads(line) for line in (proxy["dir"] / "spend.jsonl").read_text().splitlines()]
    assert {r["call_type"] for r in rows} >= {"anthropic_messages", "pass_through_endpoint"}
    for row in rows:
        insert_spend_row(db_url, row)
        matches = helpers.join(db_url, row["request_id"])
        assert len(matches) == 1, (row["call_type"], row["request_id"])
        print(f"\nproxy {row['call_type']}: request_id={row['request_id'][:20]}… joins "
              f"{helpers.strategies(matches[0])}")

    # stopping the proxy flushes what is still queued
    before = len(traces)
    stream(proxy["base"], "/v1/messages", "claude-mock")
    proxy["proc"].send_signal(signal.SIGTERM)
    proxy["proc"].wait(30)
    assert len(helpers.traces(db_url)) == before + 1
