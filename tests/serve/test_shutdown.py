# The openai client types messages as TypedDicts; plain dicts, as users write them, are fine.
# mypy: disable-error-code="arg-type,call-overload,union-attr,index,misc,list-item,attr-defined"
"""Stopping ``ctxproto serve``: requests in flight get a bounded grace, then a clean end."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from ctxproto.serve.shutdown import ShutdownCutoff

pytestmark = pytest.mark.models  # the scripted upstream comes with the proxy's fixtures


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _serve(config: Path, port: int, *options: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
    process = subprocess.Popen(
        [sys.executable, "-m", "ctxproto.cli", "serve", str(config), "--port", str(port), *options],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                return process
        except httpx.TransportError:
            time.sleep(0.1)
    process.kill()
    _, err = process.communicate(timeout=10)
    raise AssertionError(f"ctxproto serve did not start: {err.decode()[-2000:]}")


def test_sigterm_finishes_short_requests_and_ends_the_rest_in_the_envelope(tmp_path, scripted):
    """Without a bound, one slow stream kept a stopped proxy running; uvicorn's own
    bound cancels requests, which ends a stream mid-answer with no error event and
    answers a plain-text 500 with a traceback in the log."""
    config = tmp_path / "serve.yaml"
    config.write_text(f"upstream: {{type: openai, base_url: '{scripted.url}', model: scripted}}\n")
    port = _free_port()
    process = _serve(config, port, "--shutdown-grace", "1.5")
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="-", max_retries=0)

    def ask(text: str, **options: Any) -> Any:
        messages = [{"role": "user", "content": text}]
        return client.chat.completions.create(model="ctxproto", messages=messages, **options)

    try:
        with ThreadPoolExecutor(2) as pool:
            short = ask("SLOW 0.1 one two three", stream=True)
            long = ask("SLOW 0.2 " + "word " * 100, stream=True)
            next(iter(long))
            stalled = pool.submit(ask, "STALL 5")  # the headers, then nothing for 5 s
            time.sleep(0.3)
            process.send_signal(signal.SIGTERM)
            stopped = time.monotonic()
            # Within the grace: answered whole.
            short_text = "".join(c.choices[0].delta.content or "" for c in short if c.choices)
            assert short_text == "SLOW 0.1 one two three | SLOW 0.1 one two three"
            # Past it: the stream ends with an error event, the plain request is a 503.
            with pytest.raises(openai.APIError, match="shutting down"):
                for _ in long:
                    pass
            with pytest.raises(openai.InternalServerError) as raised:
                stalled.result()
            assert raised.value.status_code == 503
            assert raised.value.body["code"] == "server_shutting_down"
            assert raised.value.response.headers["x-should-retry"] == "true"
        # uvicorn raises the signal again once stopped, so the process ends by SIGTERM.
        assert process.wait(timeout=10) in (0, -signal.SIGTERM)
        assert time.monotonic() - stopped < 5
    finally:
        client.close()
        process.kill()
        _, err = process.communicate(timeout=10)
    assert b"Traceback" not in err and b"Exception in ASGI application" not in err


def test_a_cut_reaches_work_started_before_it_and_work_started_after():
    import anyio

    from ctxproto.serve.envelope import APIError

    cutoff = ShutdownCutoff()

    async def run() -> list[int]:
        statuses: list[int] = []

        async def wait_forever() -> None:
            try:
                with cutoff.guard():
                    await anyio.sleep(60)
            except APIError as exc:
                statuses.append(exc.status)

        with anyio.fail_after(5):
            async with anyio.create_task_group() as group:
                group.start_soon(wait_forever)
                await anyio.sleep(0.05)
                cutoff.cut()
            await wait_forever()  # started after the cut: refused at once
        return statuses

    assert anyio.run(run) == [503, 503]
