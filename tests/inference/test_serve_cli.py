"""``dllm serve`` as a command: it serves over HTTP, refuses mistakes in one line with exit status 2, says which
extra is missing, and importing the command line pulls in no server package."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dllm.cli import main as cli_main
from tests.helpers import import_step, run_dllm_cases

ROOT = Path(__file__).resolve().parents[2]
SERVER_PACKAGES = ("fastapi", "uvicorn", "starlette", "openai", "gradio")


VERBS_IMPORT = import_step("the verbs", 2, "import dllm, dllm.cli, dllm.inference, dllm.inference.loading, "
                           "dllm.inference.sample, dllm.inference.batching")


def test_importing_the_verbs_pulls_no_server_package(import_footprint):
    assert [m for m in SERVER_PACKAGES if m in import_footprint[VERBS_IMPORT]] == []


def test_serve_without_the_extra_says_how_to_install_it(monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "uvicorn" else real(name, *a))
    assert cli_main(["serve", "anything"]) == 2
    assert capsys.readouterr().err == "dllm serve: needs uvicorn: pip install -e '.[serve]'\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_dllm_serve_answers_and_refuses_mistakes(tiny_checkpoint, tmp_path):
    httpx = pytest.importorskip("httpx")
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    port = free_port()
    log = (tmp_path / "serve.log").open("w")
    command = [sys.executable, "-m", "dllm.cli", "serve"]
    server = subprocess.Popen([*command, str(tiny_checkpoint), "--port", str(port), "--served_model_name", "tiny",
                               "--gen_length", "4"], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    mistakes = {
        f"{tmp_path / 'missing'}: no such checkpoint folder": [str(tmp_path / "missing")],
        f"{tiny_checkpoint}: the default answer length gen_length=8 is above --max_tokens_limit 4":
            [str(tiny_checkpoint), "--max_tokens_limit", "4"],
        f"--allowed_local_media_path {tmp_path / 'nowhere'}: no such folder":
            [str(tiny_checkpoint), "--allowed_local_media_path", str(tmp_path / "nowhere")],
    }
    try:  # the mistakes in one fresh interpreter while the server starts
        refused = run_dllm_cases({message: ["serve", *args] for message, args in mistakes.items()}, dict(os.environ),
                                 ROOT)
        for message, (status, out, err) in refused.items():
            assert (status, err.splitlines()[-1:], out) == (2, [f"dllm serve: {message}"], ""), err
            assert "Traceback" not in err
        url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 300
        while True:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                if httpx.get(f"{url}/health", trust_env=False).status_code == 200:
                    break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "dllm serve did not come up"
                time.sleep(0.2)
        body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}
        response = httpx.post(f"{url}/v1/chat/completions", json=body, trust_env=False, timeout=120).json()
        assert response["model"] == "tiny"
        tokens, finish = response["usage"]["completion_tokens"], response["choices"][0]["finish_reason"]
        assert tokens == 4 if finish == "length" else tokens < 4  # the --gen_length flag, not the saved 8
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
