"""generate-qa with a transformers teacher: a model folder (or a cached hub id) run in-process,
the concurrent requests generated in batches, each reply prefilled with the opening of its JSON.

The batching worker is tested with a fake generate; the command with the tiny random Llama, whose
replies never parse (what the run does with them is asserted exactly); the slow tier with the real
SmolLM2-135M-Instruct, dequantised from its GGUF file into a transformers folder.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from document_processing.qa_generation import prompts, transformers_teacher
from document_processing.qa_generation.teachers import RequestFailed
from document_processing.qa_generation.transformers_teacher import CLOSED, Batcher, Job
from tests.script_helpers import load_script
from tests.time_limits import alarm_after

ROOT = Path(__file__).resolve().parent.parent
TEST_SECONDS = 60  # every test here is stopped after this long; the slow one gets SLOW_SECONDS
SLOW_SECONDS = 300

CHUNKS = [
    ("harbour.md", "The ferry from Quell reaches Tarn Harbour at nine in the morning."),
    ("kettle.md", "The Copper Kettle serves fish soup every Friday."),
    ("survey.md", "The Morrow river carries thirty cubic metres a second in March."),
    ("hives.md", "Kestrel Field holds forty-two hives behind a hawthorn hedge."),
    ("swarms.md", "New swarms wait six weeks at the quarantine plot."),
]
# Sentences SmolLM2-135M writes grounded pairs about (greedy, prompt+prefill).
REAL_CHUNKS = [
    (
        "railway.md",
        "The oldest engine still running is the Marrowby, painted in plum red with brass bands.",
    ),
    ("timetable.md", "Trains leave Dorrow Bridge every 40 minutes from Easter to October."),
    ("opening.md", "The Quillon Valley Railway opened in 1904."),
]


@pytest.fixture(autouse=True)
def time_limit(request: pytest.FixtureRequest) -> Iterator[None]:
    with alarm_after(SLOW_SECONDS if request.node.get_closest_marker("slow") else TEST_SECONDS):
        yield


def write_chunks(folder: Path, chunks: list[tuple[str, str]]) -> Path:
    """Chunk records as `extract` writes them, one chunk per document."""
    folder.mkdir(parents=True, exist_ok=True)
    records = [
        {"text": text, "source": source, "title": "", "chunk_id": f"{source}#0", "metadata": {}}
        for source, text in chunks
    ]
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder


def write_config(path: Path, **settings: Any) -> Path:
    body = "\n".join(f"  {key}: {json.dumps(value)}" for key, value in settings.items())
    path.write_text(f"qa_generation:\n{body}\n", encoding="utf-8")
    return path


def one_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, text
    return lines[0]


# --------------------------------------------------------------------------------------------------
# Pure parts
# --------------------------------------------------------------------------------------------------


def test_the_reply_prefix_opens_the_schemas_first_required_property():
    assert transformers_teacher.reply_prefix(prompts.PAIR_SCHEMA) == '{"question": "'
    assert transformers_teacher.reply_prefix(prompts.RATING_SCHEMA) == '{"rating": '
    assert transformers_teacher.reply_prefix({"type": "object"}) == "{"
    assert transformers_teacher.json_closed('{"rating": 4}\nmore')
    assert not transformers_teacher.json_closed('{"question": "Q?", "answer": "A')


def test_model_folders_and_cached_hub_ids_are_found_offline(tiny_llama, tmp_path, monkeypatch):
    from huggingface_hub import constants

    assert transformers_teacher.model_folder(str(tiny_llama)) == tiny_llama.resolve()
    # A hub id in the cache is read from its snapshot folder; nothing is downloaded.
    cache = tmp_path / "hub"
    repo = cache / "models--toolkit-tests--tiny"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    shutil.copytree(tiny_llama, repo / "snapshots" / ("0" * 40))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    assert transformers_teacher.model_folder("toolkit-tests/tiny") == repo / "snapshots" / (
        "0" * 40
    )
    with pytest.raises(Exception, match="hf download toolkit-tests/absent") as error:
        transformers_teacher.model_folder("toolkit-tests/absent")
    assert "no model toolkit-tests/absent in the Hugging Face cache" in one_line(str(error.value))
    (tmp_path / "empty").mkdir()
    with pytest.raises(Exception, match="a folder without config.json"):
        transformers_teacher.model_folder(str(tmp_path / "empty"))
    (tmp_path / "notes.txt").write_text("x")
    assert transformers_teacher.model_folder(str(tmp_path / "notes.txt")) is None
    assert transformers_teacher.model_folder("not a/hub/id") is None


def test_the_identity_changes_when_the_weights_are_saved_again(tiny_llama, tmp_path):
    folder = Path(shutil.copytree(tiny_llama, tmp_path / "model"))
    before = transformers_teacher.weights_identity(folder)
    assert transformers_teacher.weights_identity(folder) == before
    (weights,) = folder.glob("*.safetensors")
    weights.write_bytes(weights.read_bytes())  # the same size, saved again
    assert transformers_teacher.weights_identity(folder) != before


# --------------------------------------------------------------------------------------------------
# The batching worker, with a fake generate
# --------------------------------------------------------------------------------------------------


def test_concurrent_requests_run_in_batches_and_a_failing_batch_fails_only_its_own():
    batches: list[list[int]] = []
    release = threading.Event()

    def run_batch(jobs: list[Job]) -> list[str]:
        batches.append([job.prompt_ids[0] for job in jobs])
        release.wait(10)  # the first batch holds until every request is queued
        if 3 in batches[-1]:
            raise RuntimeError("CUDA out of memory\nTried to allocate 2 GiB")
        return [f"reply {job.prompt_ids[0]}" for job in jobs]

    batcher = Batcher(run_batch, max_batch=8)
    results: dict[int, str | RequestFailed] = {}

    def ask(number: int) -> None:
        try:
            results[number] = batcher.submit(Job([number], "{", 0.0, 16))
        except RequestFailed as exc:
            results[number] = exc

    threads = [threading.Thread(target=ask, args=(number,)) for number in range(8)]
    for thread in threads:
        thread.start()
    while not batches:
        time.sleep(0.01)
    time.sleep(0.3)  # the other requests queue behind the running batch
    release.set()
    for thread in threads:
        thread.join(10)
    batcher.close()

    assert sorted(number for batch in batches for number in batch) == list(range(8))
    assert len(batches) < 8
    for batch in batches:
        for number in batch:
            if 3 in batch:
                assert isinstance(results[number], RequestFailed)
                reason = results[number].reason
                assert reason == "generate failed (RuntimeError: CUDA out of memory)"
            else:
                assert results[number] == f"reply {number}"


def test_requests_of_other_sampling_settings_wait_for_a_batch_of_their_own():
    batches: list[list[float]] = []
    release = threading.Event()

    def run_batch(jobs: list[Job]) -> list[str]:
        batches.append([job.temperature for job in jobs])
        release.wait(10)
        return ["ok"] * len(jobs)

    batcher = Batcher(run_batch, max_batch=4)
    temperatures = [0.0, 0.0, 0.7, 0.0, 0.7]
    threads = [
        threading.Thread(target=batcher.submit, args=(Job([1], "{", temperature, 16),))
        for temperature in temperatures
    ]
    for thread in threads:
        thread.start()
    while not batches:
        time.sleep(0.01)
    time.sleep(0.3)
    release.set()
    for thread in threads:
        thread.join(10)
    batcher.close()
    assert all(len(set(batch)) == 1 for batch in batches)
    assert sorted(t for batch in batches for t in batch) == sorted(temperatures)


def test_close_stops_the_running_batch_and_fails_what_waits_promptly():
    started = threading.Event()

    def run_batch(jobs: list[Job]) -> list[str]:
        started.set()
        batcher.closing.wait(30)  # like the stopping criterion of model.generate
        return ["cut short"] * len(jobs)

    batcher = Batcher(run_batch, max_batch=2)
    outcomes: list[Any] = []

    def ask(temperature: float) -> None:
        try:
            outcomes.append(batcher.submit(Job([1], "{", temperature, 16)))
        except RequestFailed as exc:
            outcomes.append(exc)

    running = threading.Thread(target=ask, args=(0.0,))
    running.start()
    started.wait(10)
    waiting = threading.Thread(target=ask, args=(0.7,))  # queued behind the running batch
    waiting.start()
    time.sleep(0.1)
    begin = time.monotonic()
    batcher.close()
    assert time.monotonic() - begin < 2
    running.join(2)
    waiting.join(2)
    assert [o.reason for o in outcomes] == [CLOSED, CLOSED]  # nothing cut short is a reply
    with pytest.raises(RequestFailed, match="closed"):
        batcher.submit(Job([1], "{", 0.0, 16))


# --------------------------------------------------------------------------------------------------
# The command, with the tiny random Llama
# --------------------------------------------------------------------------------------------------


def test_a_model_folder_teacher_batches_and_counts_its_unparseable_replies(
    tiny_llama, tmp_path, run_main, monkeypatch
):
    from transformers import LlamaForCausalLM

    sizes: list[int] = []
    generate = LlamaForCausalLM.generate

    def recording(self: Any, *args: Any, **kwargs: Any) -> Any:
        sizes.append(kwargs["input_ids"].shape[0])
        return generate(self, *args, **kwargs)

    monkeypatch.setattr(LlamaForCausalLM, "generate", recording)
    monkeypatch.setattr(transformers_teacher, "GATHER_SECONDS", 1.0)  # a loaded CI machine
    data = write_chunks(tmp_path / "data", CHUNKS)
    config = write_config(
        tmp_path / "qa.yaml", pairs_per_chunk=1, max_tokens=16, max_retries=1, concurrency=4
    )
    out = tmp_path / "out"
    status, stdout, err = run_main(
        "generate-qa", data, out, "--teacher", tiny_llama, "--config", config, "--no-progress"
    )
    # A random model's replies never parse: each is asked again once (max_retries), then cached
    # as it is and counted; none fails, and the run ends with the one-line "no pair" error.
    assert status == 1
    assert "no pair survived the filters" in one_line(err)
    report = json.loads((out / "qa" / "qa_report.json").read_text())
    assert report["teacher"]["structured_output"] == "prompt+prefill"
    assert report["teacher"]["probe"] == {"prompt+prefill": "in-process, always"}
    assert report["teacher"]["teacher"].endswith(", batches of up to 4)")
    assert "structured output: prompt+prefill" in stdout
    requests = report["requests"]
    assert (requests["asked"], requests["failed"]) == (len(CHUNKS), 0)
    assert requests["unparseable_retried"] == len(CHUNKS)
    assert report["filters"]["survivors"]["replies"] == len(CHUNKS)
    assert report["filters"]["survivors"]["parsed"] == 0
    cached = [json.loads(line)["reply"] for line in (out / ".qa_cache" / "replies.jsonl").open()]
    assert all(reply["text"].startswith('{"question": "') for reply in cached)
    assert {reply["form"] for reply in cached} == {"prompt+prefill"}
    # Every ask went through one generate, and the concurrent ones went together.
    assert sum(sizes) == 2 * len(CHUNKS)
    assert max(sizes) > 1, sizes


def test_teachers_that_are_not_models_say_so_in_one_line(tmp_path, run_main):
    data = write_chunks(tmp_path / "data", CHUNKS)
    status, _, err = run_main(
        "generate-qa", data, tmp_path / "out", "--teacher", "toolkit-tests/not-cached"
    )
    assert status == 2
    assert "hf download toolkit-tests/not-cached" in one_line(err)
    (tmp_path / "notes.txt").write_text("x")
    status, _, err = run_main(
        "generate-qa", data, tmp_path / "out", "--teacher", tmp_path / "notes.txt"
    )
    assert status == 2
    assert "not a server URL, a .gguf file or a model" in one_line(err)


# --------------------------------------------------------------------------------------------------
# The real model (slow tier)
# --------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_smollm2_as_a_transformers_folder_writes_grounded_pairs(tmp_path, run_main):
    from training_methods.transfer_learning.model_loading import resolve_model_path

    fetch = load_script("fetch_smollm2")
    folder = resolve_model_path(str(fetch.fetch(fetch.DEFAULT_DEST)))  # dequantised once, cached
    data = write_chunks(tmp_path / "data", REAL_CHUNKS)
    config = write_config(
        tmp_path / "qa.yaml",
        pairs_per_chunk=1,
        sentences_per_pair=2,
        max_tokens=96,
        max_retries=0,
        concurrency=len(REAL_CHUNKS),
    )
    out = tmp_path / "out"
    status, stdout, err = run_main(
        "generate-qa", data, out, "--teacher", folder, "--config", config, "--no-progress"
    )
    assert status == 0, err
    report = json.loads((out / "qa" / "qa_report.json").read_text())
    assert report["teacher"]["structured_output"] == "prompt+prefill"
    assert "structured output: prompt+prefill" in stdout
    assert report["requests"]["failed"] == 0
    pairs = [json.loads(line) for line in (out / "qa" / "train.jsonl").open()]
    assert pairs and all(pair["grounding"] >= 0.75 for pair in pairs)
    assert {pair["source"] for pair in pairs} <= {source for source, _ in REAL_CHUNKS}
