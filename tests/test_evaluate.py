"""The `evaluate` command: scoring functions with exact values, question files (both record forms,
every bad line named), batched greedy decoding equal to one-by-one, and the command end to end
with base, fine-tuned and llama.cpp rows. The tiny models' answers prove mechanics, not learning:
the fine-tuned one memorised CHATS, the base one answers noise."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

from shared_utils.errors import ConfigurationError, DataValidationError
from shared_utils.word_tokens import answer_tokens, normalize_text
from tests.finetune_helpers import CHATS, FineTuned
from training_methods.transfer_learning.evaluation.question_files import (
    Question,
    prompt_messages,
    question_text,
    read_questions,
)
from training_methods.transfer_learning.evaluation.scoring import (
    contains_reference,
    token_f1,
    word_count,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def write_lines(path: Path, lines: list[Any]) -> Path:
    """Each item a line: strings as they are, anything else as JSON."""
    path.write_text(
        "".join(
            (x if isinstance(x, str) else json.dumps(x, ensure_ascii=False)) + "\n" for x in lines
        ),
        encoding="utf-8",
    )
    return path


def chats_file(path: Path) -> Path:
    """CHATS as two question records and one messages record."""
    (q1, a1), (q2, a2), (q3, a3) = CHATS
    return write_lines(
        path,
        [
            {"question": q1, "answers": [a1]},
            {"question": q2, "answers": [a2, "every week or two"]},
            {"messages": [{"role": "user", "content": q3}, {"role": "assistant", "content": a3}]},
        ],
    )


# --------------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------------


def test_normalize_text_is_nfkc_casefolded_with_whitespace_collapsed() -> None:
    assert (
        normalize_text("  Crème\u00a0BRÛLÉE\n\t ﬁne  ＡＢＣ Straße ")
        == "crème brûlée fine abc strasse"
    )
    assert normalize_text("Cafe\u0301") == normalize_text("Café") == "café"  # composed either way


@pytest.mark.parametrize(
    ("answer", "reference", "hit"),
    [
        ("The capital is Paris.", "paris", True),
        ("STRASSE", "Straße", True),  # casefolding
        ("Il est à Paris", "À PARIS", True),  # accented capitals fold
        ("the cafe", "café", False),  # accents are kept
        ("It takes 14 days", "4", False),  # no hit inside a longer number
        ("About 4.", "4", True),
        ("I do not know", "no", False),  # nor inside a longer word
        ("No, never", "no", True),
        ("turn   it\nevery week", "every week", True),  # whitespace collapsed
        ("首都は東京です。", "東京", True),  # no spaces between Japanese words: any occurrence
        ("我喜欢Python编程", "python", True),
        ("anything", "", False),  # an empty reference never hits
    ],
)
def test_hit_is_a_reference_contained_as_whole_words(
    answer: str, reference: str, hit: bool
) -> None:
    assert contains_reference(answer, [reference]) is hit


def test_hit_with_any_of_several_references() -> None:
    assert contains_reference("Every week or two.", ["fortnightly", "every week or two"])
    assert not contains_reference("Never.", ["fortnightly", "every week or two"])
    assert not contains_reference("Never.", [])


def test_tokens_drop_punctuation_and_split_unspaced_scripts_into_characters() -> None:
    assert answer_tokens('U.S.A. is "big", don\'t—ok?') == ["usa", "is", "big", "dontok"]
    assert answer_tokens("我喜欢Python编程。") == ["我", "喜", "欢", "python", "编", "程"]
    assert answer_tokens("สวัสดี") == list("สวัสดี")  # Thai: characters
    assert answer_tokens("안녕 하세요") == ["안녕", "하세요"]  # Korean is written with spaces


def test_token_f1_is_squad_f1_without_english_article_removal() -> None:
    assert token_f1("Paris!", ["paris"]) == 1.0
    # 2 common tokens: precision 2/3, recall 2/4
    assert token_f1("the cat sat", ["cat sat on mat"]) == pytest.approx(4 / 7)
    assert token_f1("the cat", ["cat"]) == pytest.approx(2 / 3)  # "the" counts
    assert token_f1("the cat", ["dog", "cat"]) == pytest.approx(2 / 3)  # the best reference
    assert token_f1("東京です", ["東京"]) == pytest.approx(2 / 3)  # characters: 2 of 4, 2 of 2
    assert token_f1("café", ["cafe"]) == 0.0
    assert token_f1("", ["paris"]) == 0.0
    assert token_f1("?", ["!"]) == 1.0  # both without tokens: SQuAD counts them as equal


def test_word_count_counts_tokens() -> None:
    assert word_count("Hello, world!") == 2
    assert word_count("東京です") == 4
    assert word_count("  ") == 0


# --------------------------------------------------------------------------------------------------
# Question files
# --------------------------------------------------------------------------------------------------


def test_read_questions_in_both_forms(tmp_path: Path) -> None:
    conversation = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What are browns?"},
        {"role": "assistant", "content": "Dry leaves."},
        {"role": "user", "content": "And greens?"},
        {"role": "assistant", "content": "Kitchen scraps."},
    ]
    path = tmp_path / "q.jsonl"
    path.write_bytes(
        b"\xef\xbb\xbf"  # a BOM, as Windows editors write it
        + json.dumps({"question": "Où est Paris ?", "answers": ["en France", "France"]}).encode()
        + b"\n\n   \n"
        + json.dumps({"messages": conversation, "answers": ["scraps"]}).encode()
        + b"\n"
    )
    first, second = read_questions(path)
    assert first == Question("Où est Paris ?", ["en France", "France"])
    assert first == ("Où est Paris ?", ["en France", "France"])  # a plain (prompt, references)
    assert second.prompt == conversation[:-1]
    assert second.references == ["Kitchen scraps.", "scraps"]  # the last turn, then `answers`
    assert question_text(first) == "Où est Paris ?" and question_text(second) == "And greens?"
    assert prompt_messages(first, "Answer in French.") == [
        {"role": "system", "content": "Answer in French."},
        {"role": "user", "content": "Où est Paris ?"},
    ]
    assert prompt_messages(second, "Answer in French.") == conversation[:-1]  # its own system turn


GOOD = {"question": "Q?", "answers": ["A"]}


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"question": "Q?", "answers": ["A"]', "not valid JSON"),
        (["Q?", "A"], "must be a JSON object, got list"),
        ({"prompt": "Q?", "answers": ["A"]}, "no `question` or `messages` (keys: answers, prompt)"),
        ({"question": "", "answers": ["A"]}, "`question` must be a non-empty string"),
        ({"question": 3, "answers": ["A"]}, "`question` must be a non-empty string"),
        ({"question": "Q?"}, "no `answers`"),
        ({"question": "Q?", "answers": []}, "`answers` must be a non-empty list of strings"),
        ({"question": "Q?", "answers": "A"}, "`answers` must be a non-empty list of strings"),
        ({"question": "Q?", "answers": ["A", 2]}, "answers[1] must be a non-empty string"),
        ({"question": "Q?", "answers": [" "]}, "answers[0] must be a non-empty string"),
        (
            {
                "messages": [
                    {"role": "assistant", "content": "A"},
                    {"role": "user", "content": "Q?"},
                ]
            },
            "the last turn of `messages` is the user's, not the assistant's",
        ),
        ({"messages": [{"role": "user", "content": "Q?"}]}, "`messages` has no assistant answer"),
        ({"messages": [{"role": "assistant", "content": "A"}]}, "no user turn before the answer"),
        ({"messages": [{"role": "robot", "content": "A"}]}, "messages[0].role is 'robot'"),
        ({"messages": "Q?"}, "`messages` must be a list"),
    ],
)
def test_a_bad_line_is_an_error_naming_file_and_line(
    tmp_path: Path, line: Any, message: str
) -> None:
    path = write_lines(tmp_path / "q.jsonl", [GOOD, "", line, GOOD])
    with pytest.raises(DataValidationError) as caught:
        read_questions(path)
    text = str(caught.value)
    assert text.startswith(f"{path}:3: ") and message in text and "\n" not in text


def test_an_empty_or_missing_file_is_an_error(tmp_path: Path) -> None:
    empty = write_lines(tmp_path / "empty.jsonl", ["", "  "])
    with pytest.raises(DataValidationError, match="no questions"):
        read_questions(empty)
    with pytest.raises(ConfigurationError, match="no such file"):
        read_questions(tmp_path / "missing.jsonl")
    (tmp_path / "latin1.jsonl").write_bytes(b'{"question": "caf\xe9", "answers": ["x"]}\n')
    with pytest.raises(DataValidationError, match=r"latin1.jsonl:1: not UTF-8"):
        read_questions(tmp_path / "latin1.jsonl")


def test_bad_input_is_one_line_with_its_exit_status(
    tmp_path: Path, tiny_llama: Path, run_main, monkeypatch: pytest.MonkeyPatch
) -> None:
    good = write_lines(tmp_path / "good.jsonl", [GOOD])
    bad = write_lines(tmp_path / "bad.jsonl", [GOOD, {"question": "Q?", "answers": []}])
    no_adapter = tmp_path / "not-an-adapter"
    no_adapter.mkdir()
    cases = [
        (["--questions", bad, "--model", tiny_llama], 1, f"{bad}:2: `answers`"),
        (["--questions", tmp_path / "nope.jsonl", "--model", tiny_llama], 2, "no such file"),
        (["--questions", good, "--adapter", no_adapter], 2, "no adapter_config.json"),
        (["--questions", good], 2, "evaluate needs --model BASE"),
        (["--questions", good, "--model", tmp_path / "no-model"], 2, "could not be loaded"),
        (
            ["--questions", good, "--model", tiny_llama, "--gguf", tmp_path / "x.gguf"],
            2,
            "--gguf",
        ),
    ]
    for argv, status, message in cases:
        code, stdout, stderr = run_main("evaluate", *argv, "--output-dir", tmp_path / "out")
        assert (code, stdout) == (status, ""), stderr
        assert stderr.startswith("error: ") and message in stderr and stderr.count("\n") == 1
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # as if it were not installed
    code, _, stderr = run_main(
        "evaluate", "--questions", good, "--model", tiny_llama, "--gguf", gguf, "--output-dir",
        tmp_path / "out",
    )  # fmt: skip
    assert code == 2 and "pip install llama-cpp-python" in stderr and stderr.count("\n") == 1
    assert not (tmp_path / "out").exists()  # a refused run leaves no empty folder behind


# --------------------------------------------------------------------------------------------------
# Answering
# --------------------------------------------------------------------------------------------------

QUESTIONS = [
    "Hi",
    CHATS[0][0],
    "Write the section about compost bins, worms and the right mix of browns and greens.",
    CHATS[1][0],
    "How?",
    CHATS[2][0],
    "Tell me everything you know about turning a pile.",
]


@pytest.mark.parametrize("which", ["base", "fine-tuned", "gpt2"])
def test_batched_greedy_answers_equal_one_by_one(
    which: str, request: pytest.FixtureRequest
) -> None:
    """Left padding changes nothing: the random base runs to the token limit, the fine-tuned model
    stops at EOS after different lengths, within one batch; GPT-2 has learned absolute positions
    (they must start at each prompt's first token, not at the padding) and no pad token."""
    import torch

    from training_methods.transfer_learning.evaluation.generation import (
        greedy_answers,
        prompt_token_ids,
    )
    from training_methods.transfer_learning.model_source import load_for_inference

    if which == "gpt2":
        model_dir, adapter = request.getfixturevalue("tiny_gpt2"), None
    else:
        model_dir = request.getfixturevalue("tiny_llama")
        finetuned = request.getfixturevalue("finetuned")
        adapter = finetuned.adapter if which == "fine-tuned" else None
    model, tokenizer = load_for_inference(str(model_dir), adapter, torch.device("cpu"))
    prompts = [[{"role": "user", "content": q}] for q in QUESTIONS]
    ids = prompt_token_ids(model, tokenizer, prompts, max_new_tokens=20)
    assert len({len(i) for i in ids}) >= 5  # prompts of many lengths: real padding
    one_by_one = greedy_answers(model, tokenizer, ids, max_new_tokens=20, batch_size=1)
    batched = greedy_answers(model, tokenizer, ids, max_new_tokens=20, batch_size=3)
    assert batched == one_by_one
    lengths = {len(tokenizer(answer)["input_ids"]) for answer in one_by_one}
    if which == "gpt2":
        assert len(set(one_by_one)) >= 3  # noise, mostly different
    elif which == "base":
        assert all(one_by_one) and len(set(one_by_one)) == len(one_by_one)  # different noise
    else:  # stopped at EOS, after answers of different lengths in one batch
        assert [one_by_one[i] for i in (1, 3, 5)] == [answer for _, answer in CHATS]
        assert len(lengths) >= 2 and max(lengths) < 20


# --------------------------------------------------------------------------------------------------
# The command end to end
# --------------------------------------------------------------------------------------------------


def table_cells(lines: list[str]) -> list[list[str]]:
    """The cells of markdown table lines."""
    assert all(line.startswith("|") and line.endswith("|") for line in lines), lines
    return [[cell.strip() for cell in line[1:-1].split("|")] for line in lines]


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_evaluate_base_and_fine_tuned_side_by_side(
    tmp_path: Path, finetuned: FineTuned, run_main
) -> None:
    adapter = shutil.copytree(finetuned.adapter, tmp_path / "adapter")  # outputs go inside it
    questions = chats_file(tmp_path / "questions.jsonl")
    status, stdout, stderr = run_main(
        "evaluate", "--questions", questions, "--adapter", adapter, "--max-new-tokens", "24",
        "--batch-size", "2", "--no-progress",
    )  # fmt: skip
    assert status == 0, stderr
    out = adapter / "evaluation"
    lines = stdout.splitlines()
    header, rule, base_row, tuned_row = table_cells(lines[:4])
    assert header == ["row", "answered", "token F1", "mean words", "seconds"]
    assert set(rule[0]) == {"-"} and all(cell.endswith(":") for cell in rule[1:])
    assert base_row[:2] == ["base", "0/3 (0%)"]
    assert tuned_row[:3] == ["fine-tuned", "3/3 (100%)", "1.000"]
    assert lines[4] == (
        f"evaluate: 3 questions, 2 rows; answers in {out / 'answers.jsonl'}, summary in "
        f"{out / 'evaluation.json'}"
    )

    answers = read_jsonl(out / "answers.jsonl")
    assert [(a["row"], a["index"]) for a in answers] == [
        (row, i) for row in ("base", "fine-tuned") for i in range(3)
    ]
    assert set(answers[0]) == {
        "row", "index", "question", "references", "answer", "hit", "f1", "words",
    }  # fmt: skip
    tuned = answers[3:]
    # The memorised answers, asked through the adapter's template, the messages record included.
    assert [a["answer"] for a in tuned] == [answer for _, answer in CHATS]
    assert [a["question"] for a in tuned] == [question for question, _ in CHATS]
    assert tuned[1]["references"] == [CHATS[1][1], "every week or two"]
    assert all(a["hit"] and a["f1"] == 1.0 for a in tuned)
    base = answers[:3]
    assert all(
        not a["hit"] and a["answer"] != b["answer"] for a, b in zip(base, tuned, strict=True)
    )
    assert [a["words"] for a in tuned] == [word_count(answer) for _, answer in CHATS]

    summary = json.loads((out / "evaluation.json").read_text(encoding="utf-8"))
    assert list(summary["rows"]) == ["base", "fine-tuned"]
    row = summary["rows"]["fine-tuned"]
    assert (row["questions"], row["hits"], row["hit_rate"], row["mean_f1"]) == (3, 3, 1.0, 1.0)
    assert row["mean_words"] == round(sum(a["words"] for a in tuned) / 3, 2)
    assert row["seconds"] > 0 and row["load_seconds"] > 0
    assert summary["rows"]["base"]["hits"] == 0
    inputs = summary["inputs"]
    base = json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert (inputs["adapter"], inputs["model"]) == (str(adapter), base)
    assert (inputs["question_count"], inputs["max_new_tokens"], inputs["batch_size"]) == (3, 24, 2)
    assert inputs["tokenizer"] == str(adapter)  # the adapter's tokenizer, for the base row too


def test_evaluate_gguf_row_through_llama_cpp(
    tmp_path: Path,
    finetuned: FineTuned,
    gguf_files: dict[str, Path],
    run_main,
) -> None:
    """The merged model through transformers and its GGUF through llama.cpp answer alike."""
    questions = chats_file(tmp_path / "questions.jsonl")
    out = tmp_path / "out"
    status, stdout, stderr = run_main(
        "evaluate", "--questions", questions, "--model", finetuned.merged, "--gguf",
        gguf_files["f32"], "--output-dir", out, "--limit", "2", "--no-progress",
    )  # fmt: skip
    assert status == 0, stderr
    _, _, base_row, gguf_row = table_cells(stdout.splitlines()[:4])
    assert base_row[:3] == ["base", "2/2 (100%)", "1.000"]
    assert gguf_row[:3] == ["gguf", "2/2 (100%)", "1.000"]
    answers = read_jsonl(out / "answers.jsonl")
    assert [a["row"] for a in answers] == ["base", "base", "gguf", "gguf"]
    expected = [answer for _, answer in CHATS[:2]]
    assert [a["answer"] for a in answers[:2]] == [a["answer"] for a in answers[2:]] == expected
    summary = json.loads((out / "evaluation.json").read_text(encoding="utf-8"))
    assert summary["rows"]["gguf"]["hit_rate"] == 1.0
    assert summary["inputs"]["gguf"] == str(gguf_files["f32"]) and summary["inputs"]["limit"] == 2


def test_system_prompt_is_asked_with_every_question(
    tmp_path: Path, tiny_llama: Path, run_main
) -> None:
    """The random base answers noise that depends on every prompt token: the answer written is
    the one to the question after the system prompt, not to the question alone."""
    import torch

    from training_methods.transfer_learning.evaluation.generation import (
        greedy_answers,
        prompt_token_ids,
    )
    from training_methods.transfer_learning.model_source import load_for_inference

    questions = chats_file(tmp_path / "questions.jsonl")
    out = tmp_path / "out"
    status, _, stderr = run_main(
        "evaluate", "--questions", questions, "--model", tiny_llama, "--system",
        "Answer briefly.", "--limit", "1", "--max-new-tokens", "12", "--output-dir", out,
        "--no-progress",
    )  # fmt: skip
    assert status == 0, stderr
    (written,) = read_jsonl(out / "answers.jsonl")
    model, tokenizer = load_for_inference(str(tiny_llama), None, torch.device("cpu"))
    user = {"role": "user", "content": CHATS[0][0]}
    with_system, alone = (
        greedy_answers(
            model, tokenizer, prompt_token_ids(model, tokenizer, [m], 12), max_new_tokens=12
        )[0]
        for m in ([{"role": "system", "content": "Answer briefly."}, user], [user])
    )
    assert written["answer"] == with_system != alone
    summary = json.loads((out / "evaluation.json").read_text(encoding="utf-8"))
    assert summary["inputs"]["system"] == "Answer briefly." and summary["inputs"]["limit"] == 1
