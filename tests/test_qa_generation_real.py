"""generate-qa with a real teacher: SmolLM2-135M-Instruct (the GGUF file `make install` fetches)
behind llama-cpp-python's OpenAI-compatible server (`python -m llama_cpp.server`, started here on
127.0.0.1 and stopped at the end), and the same file run in-process.

The slow tier, like test_real_model.py. The server refuses OpenAI's json_schema form with HTTP 500,
so the run must fall back to `{"type": "json_object", "schema": ...}` once and say so; with the
schema held by llama.cpp's grammar every reply of the small model parses.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.script_helpers import load_script
from tests.time_limits import alarm_after

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow
TEST_SECONDS = 300  # every test here is stopped after this long
SERVER_START_SECONDS = 120

# llama-cpp-python's server module, run with llama.cpp's AMX weight repacking off first (it
# segfaults on quantised files on CPUs with AMX; see llama_cpp_runtime).
LAUNCH_SERVER = (
    "import runpy, sys\n"
    "from shared_utils.llama_cpp_runtime import avoid_llama_cpp_amx_crash\n"
    "avoid_llama_cpp_amx_crash()\n"
    "runpy.run_module('llama_cpp.server', run_name='__main__', alter_sys=True)\n"
)

CHUNKS = [
    (
        "otters.md",
        "The ghost otter of Lake Varn is almost white. It hunts at dawn along the reed beds of "
        "the northern shore.",
    ),
    (
        "railway.md",
        "The Quillon Valley Railway opened in 1904. Its track is exactly 61 centimetres wide.",
    ),
]
CONFIG = """\
qa_generation:
  pairs_per_chunk: 1
  sentences_per_pair: 2
  max_tokens: 192
  request_timeout: 240
  max_retries: 1
"""


@pytest.fixture(autouse=True)
def time_limit() -> Iterator[None]:
    with alarm_after(TEST_SECONDS):
        yield


@pytest.fixture(scope="module")
def smollm2() -> Path:
    pytest.importorskip("llama_cpp")
    fetch = load_script("fetch_smollm2")
    return fetch.fetch(fetch.DEFAULT_DEST)


@pytest.fixture(scope="module")
def llama_server(smollm2: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """llama-cpp-python's server with SmolLM2 on a free port of 127.0.0.1; its URL."""
    import httpx

    for module in ("fastapi", "uvicorn", "sse_starlette", "starlette_context", "pydantic_settings"):
        pytest.importorskip(module, reason="llama-cpp-python[server] is not installed")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log_path = tmp_path_factory.mktemp("llama-server") / "server.log"
    url = f"http://127.0.0.1:{port}/v1"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-c", LAUNCH_SERVER, "--model", str(smollm2), "--host", "127.0.0.1",
             "--port", str(port), "--n_ctx", "2048"],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + SERVER_START_SECONDS
        while True:
            if process.poll() is not None:
                pytest.fail(f"the server exited ({process.returncode}): {log_path.read_text()}")
            try:
                if httpx.get(f"{url}/models", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the server did not start in {SERVER_START_SECONDS} s")
            time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "data"
    folder.mkdir()
    records = [
        {"text": text, "source": source, "title": "", "chunk_id": f"{source}#0", "metadata": {}}
        for source, text in CHUNKS
    ]
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (tmp_path / "qa.yaml").write_text(CONFIG)
    return folder


def _report(out: Path) -> dict[str, Any]:
    return json.loads((out / "qa" / "qa_report.json").read_text())


def test_llama_cpp_server_teacher_json_object_fallback_grounded_pairs_and_cache(
    llama_server, data_dir, tmp_path, run_main
):
    out = tmp_path / "out"
    argv = ["generate-qa", data_dir, out, "--teacher", llama_server,
            "--config", tmp_path / "qa.yaml", "--concurrency", "2", "--no-progress"]  # fmt: skip
    status, stdout, err = run_main(*argv)
    report = _report(out)
    assert report["teacher"]["structured_output"] == "json_object", report["teacher"]
    assert report["teacher"]["probe"]["json_schema"].startswith("failed (HTTP 500")
    assert "structured output: json_object" in stdout
    survivors = report["filters"]["survivors"]
    assert report["requests"]["failed"] == 0
    assert survivors["replies"] == len(CHUNKS)
    assert survivors["parsed"] == len(CHUNKS)  # the grammar holds even a 135M model to JSON
    assert status in (0, 1), err  # 1: nothing survived the filters, said in one line
    if survivors["not_near_duplicate"]:
        pairs = [json.loads(line) for line in (out / "qa" / "train.jsonl").open()]
        assert all(pair["grounding"] >= 0.75 for pair in pairs)
        assert {pair["source"] for pair in pairs} <= {source for source, _ in CHUNKS}
    else:
        assert "no pair survived the filters" in err

    # A rerun asks nothing: every reply comes from the cache.
    status_again, _, _ = run_main(*argv)
    again = _report(out)
    assert status_again == status
    assert again["requests"]["asked"] == 0
    assert again["requests"]["from_cache"] == len(CHUNKS)
    assert again["teacher"]["structured_output"] == "json_object (every reply from the cache)"
    assert again["filters"] == report["filters"]


def test_in_process_gguf_teacher_holds_replies_to_the_schema_with_a_grammar(
    smollm2, data_dir, tmp_path, run_main
):
    out = tmp_path / "out"
    status, stdout, err = run_main(
        "generate-qa", data_dir, out, "--teacher", smollm2, "--config", tmp_path / "qa.yaml",
        "--concurrency", "4", "--no-progress",
    )  # fmt: skip
    report = _report(out)
    assert report["teacher"]["structured_output"] == "grammar"
    assert "structured output: grammar" in stdout
    assert report["requests"]["failed"] == 0
    assert report["filters"]["survivors"]["parsed"] == len(CHUNKS)
    assert status in (0, 1), err
