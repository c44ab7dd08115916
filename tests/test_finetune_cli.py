"""train-lora / train-qlora / merge through `main([...])`: outputs, config keys, bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tests.finetune_helpers import MEMORISE_RECORDS, make_config, training_data


@pytest.fixture(scope="module")
def processed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What `extract --instruction-format` writes for the sample documents."""
    from document_processing.samples import create_samples
    from main import main

    root = tmp_path_factory.mktemp("processed")
    create_samples(root / "samples")
    out = root / "data"
    status = main(
        [
            "extract",
            str(root / "samples" / "documents"),
            str(out),
            "--instruction-format",
            "--val-ratio",
            "0",
        ]
    )
    assert status == 0
    return out


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    return path


# -------------------------------------------------------------------------------- end to end


def test_train_lora_end_to_end_with_eval_checkpoints_samples_and_merge(
    run_main, tmp_path: Path, tiny_llama: Path, processed: Path
) -> None:
    config = write_config(
        tmp_path,
        f"""
common: {{device: cpu}}
transfer_learning:
  lora:
    model_name: {tiny_llama}
    train_data: {processed / "chat" / "train.jsonl"}
    val_size: 0.25
    max_length: 96
    num_samples: 2
    training: {{max_steps: 6, batch_size: 2, learning_rate: 0.005, logging_steps: 1,
                eval_steps: 2, save_steps: 3, max_checkpoints: 1}}
    early_stopping: {{enabled: false}}
logging: {{log_dir: tb, use_wandb: true}}
""",
    )
    out = tmp_path / "run"
    status, stdout, err = run_main("train-lora", "--config", config, "--output-dir", out, "--merge")
    assert status == 0, err
    assert "train-lora: 6 steps" in stdout and f"adapter in {out}" in stdout
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["split"] == "eval"] == [2, 4, 6]
    assert all(r["perplexity"] > 1 for r in records if r["split"] == "eval")
    assert [p.name for p in out.glob("checkpoint-*")] == ["checkpoint-6"]  # max_checkpoints: 1
    assert list((out / "tb").glob("events.out.tfevents.*"))  # logging.log_dir
    assert list((out / "wandb").glob("offline-run-*"))  # use_wandb, offline without a key
    assert (out / "samples.txt").read_text().count("### Prompt") == 2  # lora.num_samples
    summary = json.loads((out / "training_summary.json").read_text())
    records_in_file = len((processed / "chat" / "train.jsonl").read_text().splitlines())
    assert summary["eval_examples"] == round(0.25 * records_in_file)  # val_size: 0.25
    assert summary["peak_rss_mb"] > 0
    assert summary["data"]["files"][0]["record_format"] == "chat"
    resolved = (out / "resolved_config.yaml").read_text()
    assert "max_steps: 6" in resolved

    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(out / "merged")
    assert merged.config.model_type == "llama"
    status, _, err = run_main("merge", "--adapter", out, "--output", out / "merged")
    assert status == 2 and "--force" in err
    status, stdout, _ = run_main("merge", "--adapter", out, "--output", out / "merged", "--force")
    assert status == 0 and "merge: wrote" in stdout


def test_text_records_from_extract_train(
    run_main, tmp_path: Path, tiny_llama: Path, processed: Path
) -> None:
    status, stdout, err = run_main(
        "train-lora",
        "--model-name",
        tiny_llama,
        "--train-data",
        processed / "train.jsonl",
        "--output-dir",
        tmp_path / "run",
        "--max-steps",
        "2",
        "--batch-size",
        "2",
    )
    assert status == 0, err
    assert "2 steps" in stdout


# -------------------------------------------------------------------------------- config keys


def test_training_keys_reach_the_trainer(tmp_path: Path, tiny_llama: Path) -> None:
    """Each key of transfer_learning.lora.training changes the arguments the Trainer runs
    with."""
    from training_methods.transfer_learning.finetuning.lora_finetuner import LoRAFineTuner

    cases = {
        "training.num_epochs": (7.0, "num_train_epochs", 7.0),
        "training.batch_size": (5, "per_device_train_batch_size", 5),
        "training.gradient_accumulation_steps": (3, "gradient_accumulation_steps", 3),
        "training.learning_rate": (1e-5, "learning_rate", 1e-5),
        "training.weight_decay": (0.05, "weight_decay", 0.05),
        "training.warmup_ratio": (0.2, "warmup_steps", 0.2),
        "training.lr_scheduler_type": ("linear", "lr_scheduler_type", "linear"),
        "training.max_grad_norm": (0.3, "max_grad_norm", 0.3),
        "training.max_steps": (9, "max_steps", 9),
        "training.logging_steps": (4, "logging_steps", 4),
        "training.gradient_checkpointing": (True, "activation_checkpointing", True),
        "training.optim": ("adafactor", "optim", "adafactor"),
        "training.group_by_length": (False, "train_sampling_strategy", "random"),
        "training.save_steps": (11, "save_steps", 11),
        "training.max_checkpoints": (2, "save_total_limit", 2),
        "training.eval_steps": (13, "eval_steps", 13),
        "common.seed": (7, "seed", 7),
    }
    default_args = LoRAFineTuner.from_config(make_config(tmp_path, tiny_llama)).training_arguments(
        tmp_path, has_eval=True
    )
    for key, (value, attribute, expected) in cases.items():
        config = make_config(tmp_path, tiny_llama, **{key: value})
        args = LoRAFineTuner.from_config(config).training_arguments(tmp_path, has_eval=True)
        got = getattr(args, attribute)
        got = getattr(got, "value", got)  # enums
        assert got == expected, key
        assert getattr(default_args, attribute) != getattr(args, attribute), key


def test_lora_keys_shape_the_adapter_and_data(tmp_path: Path, tiny_llama: Path) -> None:
    from training_methods.transfer_learning.finetuning.lora_finetuner import LoRAFineTuner

    config = make_config(
        tmp_path,
        tiny_llama,
        lora_r=4,
        lora_alpha=8,
        lora_dropout=0.25,
        target_modules=["q_proj", "v_proj"],
        max_length=32,
        train_on_prompt=True,
        packing=True,
    )
    tuner = LoRAFineTuner.from_config(config)
    peft_config = tuner.model.peft_config["default"]
    assert (peft_config.r, peft_config.lora_alpha, peft_config.lora_dropout) == (4, 8, 0.25)
    assert sorted(peft_config.target_modules) == ["q_proj", "v_proj"]
    records = [{"instruction": "Say it", "input": "", "output": "compost " * 20}] * 3
    dataset = training_data(tuner, records, tmp_path)
    assert tuner.data.tokenize_stats.truncated == 3  # max_length: 32
    assert "position_ids" in dataset.column_names  # packing
    assert all(len(row) <= 32 for row in dataset["input_ids"])
    first = dataset[0]
    # train_on_prompt: every token but the first of each packed example is labelled
    assert sum(label == -100 for label in first["labels"]) == first["position_ids"].count(0)


def test_early_stopping_and_restore_best_weights(tmp_path: Path, tiny_llama: Path) -> None:
    from safetensors.torch import load_file

    from training_methods.transfer_learning.finetuning.lora_finetuner import LoRAFineTuner

    def run(name: str, **overrides):
        config = make_config(
            tmp_path / name,
            tiny_llama,
            **{
                "training.max_steps": 8,
                "training.eval_steps": 2,
                "early_stopping.patience": 1,
                "early_stopping.min_delta": 1e9,
                **overrides,
            },
        )
        tuner = LoRAFineTuner.from_config(config)
        data = training_data(tuner, MEMORISE_RECORDS, tmp_path / name)
        return tuner.train(data, data, output_dir=tmp_path / name / "run"), tmp_path / name / "run"

    stopped, out = run("stop")
    # min_delta is huge, so no evaluation after the first improves: stop at the second one.
    assert stopped.stopped_early and stopped.global_step == 4 and stopped.best_step == 2
    final = load_file(str(out / "adapter_model.safetensors"))
    best = load_file(str(out / "best_adapter" / "adapter_model.safetensors"))
    assert all((final[k] == best[k]).all() for k in final)  # restore_best_weights

    full, _ = run("nostop", **{"early_stopping.enabled": False})
    assert not full.stopped_early and full.global_step == 8

    kept, out = run("norestore", **{"early_stopping.restore_best_weights": False})
    assert not kept.restored_best
    final = load_file(str(out / "adapter_model.safetensors"))
    best = load_file(str(out / "best_adapter" / "adapter_model.safetensors"))
    assert any(not (final[k] == best[k]).all() for k in final)


def test_use_tensorboard_false_writes_no_event_files(
    run_main, tmp_path: Path, tiny_llama: Path, processed: Path
) -> None:
    config = write_config(tmp_path, "logging: {use_tensorboard: false}\ncommon: {device: cpu}\n")
    status, _, err = run_main(
        "train-lora",
        "--config",
        config,
        "--model-name",
        tiny_llama,
        "--train-data",
        processed / "chat" / "train.jsonl",
        "--output-dir",
        tmp_path / "run",
        "--max-steps",
        "1",
    )
    assert status == 0, err
    assert not (tmp_path / "run" / "logs").exists()
    assert (tmp_path / "run" / "metrics.jsonl").stat().st_size > 0


# -------------------------------------------------------------------------------- bad input


def test_unknown_model_is_one_line_with_the_offline_hint(
    run_main, tmp_path: Path, processed: Path
) -> None:
    status, _, err = run_main(
        "train-lora",
        "--model-name",
        tmp_path / "no-such-model",
        "--train-data",
        processed / "train.jsonl",
        "--output-dir",
        tmp_path / "run",
    )
    assert status == 2
    assert err.count("\n") == 1 and "no-such-model" in err and "offline" in err


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"text": "fine"}\n{broken\n', "data.jsonl:2: not valid JSON"),
        ('{"text": ""}\n', "no usable record"),
        ('{"query": "q", "reply": "r"}\n', "data.jsonl:1: a record the trainer cannot use"),
    ],
)
def test_bad_training_data_names_file_and_line(
    run_main, tmp_path: Path, tiny_llama: Path, content: str, message: str
) -> None:
    data = tmp_path / "data.jsonl"
    data.write_text(content, encoding="utf-8")
    status, _, err = run_main(
        "train-lora",
        "--model-name",
        tiny_llama,
        "--train-data",
        data,
        "--output-dir",
        tmp_path / "run",
    )
    assert status == 1
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "run").exists()


def test_resume_without_checkpoint_and_merge_without_adapter(
    run_main, tmp_path: Path, tiny_llama: Path, processed: Path
) -> None:
    status, _, err = run_main(
        "train-lora",
        "--model-name",
        tiny_llama,
        "--train-data",
        processed / "train.jsonl",
        "--output-dir",
        tmp_path / "run",
        "--resume",
    )
    assert status == 2 and "--resume: no checkpoint-* folder" in err
    status, _, err = run_main("merge", "--adapter", tmp_path, "--output", tmp_path / "m")
    assert status == 2 and "adapter_config.json" in err


def test_cuda_requested_without_cuda(
    run_main, tmp_path: Path, tiny_llama: Path, processed: Path
) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    config = write_config(tmp_path, "common: {device: cuda}\n")
    status, _, err = run_main(
        "train-lora",
        "--config",
        config,
        "--model-name",
        tiny_llama,
        "--train-data",
        processed / "train.jsonl",
    )
    assert status == 2 and "common.device" in err


def test_cuda_out_of_memory_names_the_remedies(
    run_main, tmp_path: Path, tiny_llama: Path, processed: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch
    from transformers import Trainer

    def out_of_memory(self, *args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(Trainer, "train", out_of_memory)
    status, _, err = run_main(
        "train-lora",
        "--model-name",
        tiny_llama,
        "--train-data",
        processed / "train.jsonl",
        "--output-dir",
        tmp_path / "run",
        "--batch-size",
        "8",
    )
    assert status == 1
    assert "batch_size=8" in err and "gradient_checkpointing" in err and "train-qlora" in err


@pytest.mark.slow
def test_accelerate_runs_data_parallel_on_two_cpu_processes(
    tmp_path: Path, tiny_llama: Path, processed: Path
) -> None:
    """`accelerate launch` with 2 processes (gloo on CPU): both ranks train, one adapter."""
    import os
    import subprocess
    import sys

    repo = Path(__file__).resolve().parent.parent
    accelerate = Path(sys.executable).parent / "accelerate"
    out = tmp_path / "run"
    proc = subprocess.run(
        [
            str(accelerate),
            "launch",
            "--multi_gpu",
            "--num_processes",
            "2",
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            str(repo / "main.py"),
            "train-lora",
            "--model-name",
            str(tiny_llama),
            "--train-data",
            str(processed / "chat" / "train.jsonl"),
            "--output-dir",
            str(out),
            "--max-steps",
            "3",
            "--batch-size",
            "1",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "rank 0 of 2: trained 3 steps" in proc.stderr
    assert "rank 1 of 2: trained 3 steps" in proc.stderr
    assert proc.stdout.count("train-lora: 3 steps") == 1  # only rank 0 reports
    assert (out / "adapter_model.safetensors").is_file()
    state = json.loads((out / "checkpoint-3" / "trainer_state.json").read_text())
    examples = json.loads((out / "training_summary.json").read_text())["train_examples"]
    # The distributed sampler gives each rank half the examples, so an epoch is half as many
    # steps as a single process needs.
    assert state["epoch"] == pytest.approx(3 / math.ceil(examples / 2))


def test_eval_data_file_and_val_size_split(
    run_main, tmp_path: Path, tiny_llama: Path, processed: Path
) -> None:
    chat = processed / "chat"
    train_records = len((chat / "train.jsonl").read_text().splitlines())
    base = [
        "train-lora",
        "--model-name",
        tiny_llama,
        "--train-data",
        chat / "train.jsonl",
        "--max-steps",
        "1",
    ]
    # By default nothing is held out: every record of a document folder teaches a fact.
    status, _, err = run_main(*base, "--output-dir", tmp_path / "all")
    assert status == 0, err
    summary = json.loads((tmp_path / "all" / "training_summary.json").read_text())
    assert (summary["train_examples"], summary["eval_examples"]) == (train_records, 0)
    config = tmp_path / "val.yaml"
    config.write_text("transfer_learning: {lora: {val_size: 0.1}}\n", encoding="utf-8")
    status, _, err = run_main(*base, "--config", config, "--output-dir", tmp_path / "a")
    assert status == 0, err
    summary = json.loads((tmp_path / "a" / "training_summary.json").read_text())
    held_out = round(0.1 * train_records)
    assert (summary["train_examples"], summary["eval_examples"]) == (
        train_records - held_out,
        held_out,
    )
    eval_file = tmp_path / "eval.jsonl"
    eval_file.write_text("".join((chat / "train.jsonl").read_text().splitlines(True)[:3]))
    status, _, err = run_main(*base, "--output-dir", tmp_path / "b", "--eval-data", eval_file)
    assert status == 0, err
    summary = json.loads((tmp_path / "b" / "training_summary.json").read_text())
    assert (summary["train_examples"], summary["eval_examples"]) == (train_records, 3)


def test_train_qlora_end_to_end_merges_into_a_full_precision_base(
    run_main, tmp_path: Path, tiny_llama: Path, processed: Path
) -> None:
    config = write_config(
        tmp_path,
        f"""
common: {{device: cpu}}
transfer_learning:
  qlora:
    model_name: {tiny_llama}
    train_data: {processed / "chat" / "train.jsonl"}
    max_length: 48
    lora_r: 8
    training: {{max_steps: 3, batch_size: 2, gradient_checkpointing: true}}
    num_samples: 0
""",
    )
    out = tmp_path / "run"
    status, stdout, err = run_main(
        "train-qlora", "--config", config, "--output-dir", out, "--merge"
    )
    assert status == 0, err
    assert "train-qlora: 3 steps" in stdout  # qlora.training.max_steps
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["data"]["truncated"] > 0  # qlora.max_length: 48
    assert json.loads((out / "adapter_config.json").read_text())["r"] == 8
    from safetensors import safe_open

    with safe_open(str(out / "merged" / "model.safetensors"), "pt") as weights:
        dtypes = {weights.get_slice(name).get_dtype() for name in weights.keys()}
    assert dtypes == {"F32"}  # merged into the base reloaded in full precision, not 4-bit


def test_out_of_range_values_name_the_key(run_main, tmp_path: Path, tiny_llama: Path) -> None:
    for text, key in [
        ("transfer_learning: {lora: {training: {batch_size: 0}}}", "lora.training.batch_size"),
        ("transfer_learning: {qlora: {lora_r: 0}}", "transfer_learning.qlora.lora_r"),
        ("transfer_learning: {lora: {val_size: 1.5}}", "transfer_learning.lora.val_size"),
        ("transfer_learning: {lora: {training: {save_steps: 0}}}", "lora.training.save_steps"),
        ("transfer_learning: {lora: {training: {eval_steps: 0}}}", "lora.training.eval_steps"),
        (
            "transfer_learning: {qlora: {early_stopping: {patience: 0}}}",
            "transfer_learning.qlora.early_stopping.patience",
        ),
    ]:
        config = write_config(tmp_path, text + "\n")
        command = "train-qlora" if "qlora" in key else "train-lora"
        status, _, err = run_main(command, "--config", config, "--model-name", tiny_llama)
        assert status == 2, (key, err)
        assert key in err and err.count("\n") == 1


def test_merge_finds_the_base_from_anywhere_and_takes_its_tokenizer(
    run_main, tmp_path: Path, tiny_llama: Path, processed: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    local_model = tmp_path / "models" / "tiny"
    shutil.copytree(tiny_llama, local_model)
    monkeypatch.chdir(tmp_path)
    status, _, err = run_main(
        "train-lora",
        "--model-name",
        "models/tiny",
        "--train-data",
        processed / "chat" / "train.jsonl",
        "--output-dir",
        "run",
        "--max-steps",
        "2",
        "--config",
        write_config(
            tmp_path,
            "transfer_learning: {lora: {val_size: 0.1, training: {eval_steps: 1}}}\n",
        ),
    )
    assert status == 0, err
    monkeypatch.chdir(tmp_path / "run")  # the base was given relative to tmp_path
    status, _, err = run_main("merge", "--adapter", "best_adapter", "--output", "../merged")
    assert status == 0, err  # best_adapter/ has no tokenizer: the base's is used
    assert (tmp_path / "merged" / "tokenizer.json").is_file()
    status, _, err = run_main("merge", "--adapter", ".", "--output", ".", "--force")
    assert status == 2 and "would replace the adapter folder" in err
