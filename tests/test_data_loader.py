"""Training data: record detection and validation, response-only labels, EOS, padding, packing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared_utils.chat_templates import DEFAULT_CHAT_TEMPLATE
from shared_utils.data_loader import CausalLMCollator, DataLoaderFactory
from shared_utils.errors import DataValidationError
from shared_utils.training_records import detect_format, read_records
from shared_utils.training_tokens import IGNORE_INDEX, ExampleTokenizer, pack_rows


def write_jsonl(path: Path, records: list) -> Path:
    lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def llama_tokenizer(tiny_llama: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_llama)


@pytest.fixture
def gpt2_tokenizer(tiny_gpt2: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_gpt2)


def row(messages=None, prompt="", completion=""):
    return {"prompt": [prompt], "completion": [completion], "messages": [messages or []]}


# -------------------------------------------------------------------------------- records


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        ({"messages": []}, "chat"),
        (
            {"instruction": "a", "input": "", "output": "b", "prompt": "p", "completion": "c"},
            "alpaca",
        ),
        ({"prompt": "p", "completion": "c"}, "prompt_completion"),
        ({"text": "t", "metadata": {}}, "text"),
        ({"question": "q"}, None),
    ],
)
def test_detect_format(record: dict, expected: str | None) -> None:
    assert detect_format(record) == expected


def test_read_records_normalises_and_skips_empty(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "a.jsonl",
        [
            {"instruction": "Name a brown.", "input": "", "output": "Dry leaves."},
            {"instruction": "Sort these.", "input": "straw, peel", "output": "straw: brown"},
            {"instruction": "Empty output.", "input": "", "output": "  "},
            "",
        ],
    )
    rows, stats = read_records(path)
    assert (stats.records, stats.skipped_empty, stats.record_format) == (2, 1, "alpaca")
    assert rows[1]["messages"] == [
        {"role": "user", "content": "Sort these.\n\nstraw, peel"},
        {"role": "assistant", "content": "straw: brown"},
    ]


def test_what_extract_writes_reads_as_is(run_main, samples_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "processed"
    status, _, _ = run_main(
        "extract", samples_dir / "documents", out, "--instruction-format", "--val-ratio", "0"
    )
    assert status == 0
    for path, kind in [
        (out / "train.jsonl", "text"),
        (out / "alpaca" / "train.jsonl", "alpaca"),
        (out / "chat" / "train.jsonl", "chat"),
    ]:
        rows, stats = read_records(path)
        assert stats.record_format == kind and len(rows) == stats.records > 0


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (['{"text": "ok"}', "{not json"], "bad.jsonl:2: not valid JSON"),
        (['{"text": "ok"}', "[1, 2]"], "bad.jsonl:2: each line must be a JSON object"),
        (['{"question": "q", "answer": "a"}'], "bad.jsonl:1: a record the trainer cannot use"),
        (
            ['{"text": "ok"}', '{"prompt": "p", "completion": "c"}'],
            "bad.jsonl:2: a prompt_completion",
        ),
        (['{"messages": [{"role": "bot", "content": "x"}]}'], "bad.jsonl:1: messages[0].role"),
        (['{"text": 5}'], "bad.jsonl:1: `text` must be a string"),
        (['{"text": " "}', '{"text": ""}'], "bad.jsonl: no usable record (2 empty skipped)"),
    ],
)
def test_bad_records_name_file_and_line(tmp_path: Path, lines: list[str], message: str) -> None:
    path = write_jsonl(tmp_path / "bad.jsonl", lines)
    with pytest.raises(DataValidationError) as info:
        read_records(path)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_file_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(DataValidationError, match="extract"):
        read_records(tmp_path / "none.jsonl")


# -------------------------------------------------------------------------------- labels


def test_toy_chat_labels_mask_the_prompt_and_keep_eos(llama_tokenizer) -> None:
    messages = [
        {"role": "user", "content": "Turn it?"},
        {"role": "assistant", "content": "Weekly."},
        {"role": "user", "content": "Why?"},
        {"role": "assistant", "content": "Oxygen."},
    ]
    tok = llama_tokenizer
    out = ExampleTokenizer(tok, 256, train_on_prompt=False)(row(messages))
    ids, labels = out["input_ids"][0], out["labels"][0]
    # The exact sequence: BOS, the ChatML render, and nothing appended (each turn ends in EOS).
    text = tok.apply_chat_template(messages, tokenize=False)
    assert ids == tok(text, add_special_tokens=False)["input_ids"]
    end = tok.convert_tokens_to_ids("<|im_end|>")
    assert tok.eos_token_id == end
    expected = []
    for prefix, answer in [
        (
            tok.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True),
            "Weekly.",
        ),
        ("<|im_end|>\n<|im_start|>user\nWhy?<|im_end|>\n<|im_start|>assistant\n", "Oxygen."),
    ]:
        prefix_ids = tok(prefix, add_special_tokens=False)["input_ids"]
        if expected:  # the first <|im_end|> of this prefix was the previous response's label
            prefix_ids = prefix_ids[1:]
        answer_ids = tok(answer, add_special_tokens=False)["input_ids"]
        expected += [IGNORE_INDEX] * len(prefix_ids) + answer_ids + [end]
    expected += [IGNORE_INDEX]  # the newline after the last <|im_end|> is template glue
    assert labels == expected
    assert labels.count(end) == 2


def test_train_on_prompt_labels_every_token(llama_tokenizer) -> None:
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    out = ExampleTokenizer(llama_tokenizer, 256, train_on_prompt=True)(row(messages))
    assert out["labels"][0] == out["input_ids"][0]


def test_text_records_learn_every_token_and_eos(llama_tokenizer) -> None:
    tok = llama_tokenizer
    out = ExampleTokenizer(tok, 256, train_on_prompt=False)(
        row(completion="Compost feeds the soil.")
    )
    ids, labels = out["input_ids"][0], out["labels"][0]
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    assert labels == [IGNORE_INDEX, *ids[1:]]


def test_prompt_completion_learns_only_the_completion(llama_tokenizer) -> None:
    tok = llama_tokenizer
    out = ExampleTokenizer(tok, 256, train_on_prompt=False)(
        row(prompt="Q: ratio?\nA:", completion=" three to one")
    )
    labels = out["labels"][0]
    learned = [t for t in labels if t != IGNORE_INDEX]
    assert tok.decode(learned) == " three to one<|im_end|>"


def test_first_completion_word_is_learned_after_a_prompt_ending_in_a_space(
    llama_tokenizer,
) -> None:
    tok = llama_tokenizer
    out = ExampleTokenizer(tok, 256, train_on_prompt=False)(
        row(prompt="Answer: ", completion="three to one")
    )
    learned = [t for t in out["labels"][0] if t != IGNORE_INDEX]
    assert tok.decode(learned).strip() == "three to one<|im_end|>"


def test_eos_kept_when_pad_is_eos(gpt2_tokenizer) -> None:
    """GPT-2-style tokenizers pad with EOS; labels must still teach the model to emit it."""
    tok = gpt2_tokenizer
    assert tok.pad_token is None and not tok.chat_template
    factory = DataLoaderFactory(tok, 128, train_on_prompt=False, packing=False, seed=0)
    assert tok.pad_token_id == tok.eos_token_id
    assert tok.chat_template == DEFAULT_CHAT_TEMPLATE
    messages = [{"role": "user", "content": "add"}, {"role": "assistant", "content": "a + b"}]
    short = factory.example_tokenizer(row(messages))
    longer = factory.example_tokenizer(
        row([messages[0], {"role": "assistant", "content": "x " * 9}])
    )
    features = [
        {"input_ids": short["input_ids"][0], "labels": short["labels"][0]},
        {"input_ids": longer["input_ids"][0], "labels": longer["labels"][0]},
    ]
    batch = factory.collator(features)
    first_len = len(features[0]["input_ids"])
    labels = batch["labels"][0].tolist()
    # The response's EOS is labelled; the padding after it (also the EOS id) is not.
    eos_positions = [i for i, t in enumerate(labels) if t == tok.eos_token_id]
    assert eos_positions and max(eos_positions) < first_len
    assert labels[first_len:] == [IGNORE_INDEX] * (len(labels) - first_len)
    assert batch["attention_mask"][0].tolist() == [1] * first_len + [0] * (len(labels) - first_len)
    learned = tok.decode([t for t in labels if t != IGNORE_INDEX])
    assert learned == "a + b<eos>"


def test_truncation_is_counted_and_prompt_only_examples_dropped(llama_tokenizer) -> None:
    tokenizer = ExampleTokenizer(llama_tokenizer, 12, train_on_prompt=False)
    long_prompt = [
        {"role": "user", "content": "word " * 40},
        {"role": "assistant", "content": "ok"},
    ]
    out = tokenizer(
        {
            "prompt": ["", ""],
            "completion": ["", "compost " * 40],
            "messages": [long_prompt, []],
        }
    )
    assert len(out["input_ids"]) == 1  # the chat lost its whole response and was dropped
    assert len(out["input_ids"][0]) == 12
    assert out["input_ids"][0][-1] != llama_tokenizer.eos_token_id  # cut, so no EOS to learn
    stats = tokenizer.stats
    assert (stats.examples, stats.truncated, stats.dropped_no_response) == (2, 2, 1)


def test_dynamic_padding_pads_to_the_longest_in_the_batch() -> None:
    collator = CausalLMCollator(pad_token_id=0)
    batch = collator(
        [{"input_ids": [5, 6, 7], "labels": [5, 6, 7]}, {"input_ids": [8], "labels": [-100]}]
    )
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["labels"].tolist() == [[5, 6, 7], [-100, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


# -------------------------------------------------------------------------------- packing


def test_packing_restarts_positions_and_masks_boundaries() -> None:
    import datasets

    tokenized = datasets.Dataset.from_dict(
        {
            "input_ids": [[1, 2, 3], [4, 5], [6, 7, 8, 9], [10]],
            "labels": [[1, 2, 3], [-100, 5], [6, 7, 8, 9], [10]],
            "length": [3, 2, 4, 1],
        }
    )
    packed = pack_rows(tokenized, max_length=6)
    # First-fit, longest first: [4 tokens + 2 tokens], [3 tokens + 1 token].
    assert packed["input_ids"] == [[6, 7, 8, 9, 4, 5], [1, 2, 3, 10]]
    assert packed["position_ids"] == [[0, 1, 2, 3, 0, 1], [0, 1, 2, 0]]
    assert packed["labels"] == [[-100, 7, 8, 9, -100, 5], [-100, 2, 3, -100]]
    batch = CausalLMCollator(pad_token_id=0)([packed[0], packed[1]])
    assert "attention_mask" not in batch
    # Padding gets positions of its own, a block no real token attends to.
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 0, 1], [0, 1, 2, 0, 0, 1]]
    assert batch["labels"][1].tolist() == [-100, 2, 3, -100, -100, -100]


def test_packed_examples_do_not_attend_to_each_other(tiny_llama: Path) -> None:
    """The logits of a packed row equal those of each example run alone.

    Training runs without a KV cache (the fine-tuner sets `use_cache=False`); with a cache,
    transformers does not derive the packed mask from the position ids.
    """
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    first, second = [0, 11, 12, 13, 14], [0, 21, 22, 23]
    with torch.no_grad():
        alone_first = model(input_ids=torch.tensor([first])).logits[0]
        alone_second = model(input_ids=torch.tensor([second])).logits[0]
        packed = model(
            input_ids=torch.tensor([first + second]),
            position_ids=torch.tensor([list(range(5)) + list(range(4))]),
            use_cache=False,
        ).logits[0]
    torch.testing.assert_close(packed[:5], alone_first, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(packed[5:], alone_second, atol=1e-5, rtol=1e-4)


def test_dataloader_factory_end_to_end(llama_tokenizer, samples_dir: Path) -> None:
    # What the fine-tuner does: rows -> tokenised, packed dataset -> batches of the collator.
    factory = DataLoaderFactory(llama_tokenizer, 64, train_on_prompt=False, packing=True, seed=0)
    dataset = factory.build_dataset(
        factory.load_rows(samples_dir / "datasets" / "chat.jsonl"), shuffle=True
    )
    batches = [
        factory.collator([dataset[i] for i in range(start, min(start + 2, len(dataset)))])
        for start in range(0, len(dataset), 2)
    ]
    assert sum(int((b["labels"] != IGNORE_INDEX).sum()) for b in batches) == (
        factory.tokenize_stats.response_tokens - 0
    )
    assert all(b["input_ids"].shape[1] <= 64 for b in batches)


def test_records_live_in_a_memory_mapped_arrow_file(tmp_path: Path) -> None:
    """The rows are read from an Arrow cache file on disk, not held in Python lists."""
    path = write_jsonl(tmp_path / "big.jsonl", [{"text": f"line {i} " * 20} for i in range(3000)])
    rows, stats = read_records(path)
    assert stats.records == 3000
    assert rows.cache_files and all(Path(f["filename"]).is_file() for f in rows.cache_files)
    assert rows[2999]["completion"].startswith("line 2999")
