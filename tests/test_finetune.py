"""LoRA and QLoRA fine-tuning on tiny random models: learning, reloading, merging, resuming."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared_utils.errors import ConfigurationError, TrainingError
from tests.finetune_helpers import MEMORISE, MEMORISE_RECORDS, make_config, training_data


def train_losses(run: Path) -> dict[int, float]:
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in lines if r["split"] == "train" and "loss" in r}


def lora_tuner(config):
    from training_methods.transfer_learning.finetuning.lora_finetuner import LoRAFineTuner

    return LoRAFineTuner.from_config(config)


# -------------------------------------------------------------------------------- learning


def test_loss_halves_on_a_memorisation_set(tmp_path: Path, tiny_llama: Path) -> None:
    config = make_config(tmp_path, tiny_llama, **{"training.max_steps": 50})
    tuner = lora_tuner(config)
    result = tuner.train(
        training_data(tuner, MEMORISE_RECORDS, tmp_path), output_dir=tmp_path / "run"
    )
    losses = train_losses(tmp_path / "run")
    assert losses[50] < losses[1] / 2, losses
    assert result.global_step == 50
    saved = tmp_path / "run"
    for name in (
        "adapter_model.safetensors",
        "adapter_config.json",
        "tokenizer.json",
        "resolved_config.yaml",
        "training_summary.json",
        "loss.png",
        "metrics.jsonl",
    ):
        assert (saved / name).is_file(), name


def test_loraplus_gives_the_b_matrices_a_larger_learning_rate(
    tmp_path: Path, tiny_llama: Path
) -> None:
    from transformers import TrainerCallback

    rates: dict[str, float] = {}

    class Rates(TrainerCallback):
        def on_train_begin(self, args, state, control, optimizer=None, **kwargs):  # noqa: ANN001
            names = {id(p): n for n, p in kwargs["model"].named_parameters()}
            for group in optimizer.param_groups:
                for param in group["params"]:
                    rates[names[id(param)]] = group["lr"]

    config = make_config(
        tmp_path, tiny_llama, **{"training.max_steps": 2, "training.loraplus_lr_ratio": 16.0}
    )
    tuner = lora_tuner(config)
    tuner.train(
        training_data(tuner, MEMORISE_RECORDS, tmp_path),
        output_dir=tmp_path / "run",
        callbacks=[Rates()],
    )
    a_rates = {rate for name, rate in rates.items() if "lora_A" in name}
    b_rates = {rate for name, rate in rates.items() if "lora_B" in name}
    assert a_rates == {5e-3} and b_rates == {5e-3 * 16}


def test_adapter_reloads_to_identical_logits_and_merge_matches(
    tmp_path: Path, tiny_llama: Path
) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from training_methods.transfer_learning.merge import merge_adapter

    config = make_config(tmp_path, tiny_llama, **{"training.max_steps": 8})
    tuner = lora_tuner(config)
    tuner.train(training_data(tuner, MEMORISE_RECORDS, tmp_path), output_dir=tmp_path / "run")
    ids = tuner.tokenizer(MEMORISE[0], return_tensors="pt")["input_ids"]
    tuner.model.eval()
    with torch.no_grad():
        trained = tuner.model(input_ids=ids).logits
        base = AutoModelForCausalLM.from_pretrained(tiny_llama)
        untouched = base(input_ids=ids).logits
        reloaded = PeftModel.from_pretrained(base, tmp_path / "run").eval()
        torch.testing.assert_close(reloaded(input_ids=ids).logits, trained, atol=0, rtol=0)
        assert not torch.allclose(untouched, trained, atol=1e-3)  # the adapter changed the model

        merged_dir = merge_adapter(tmp_path / "run", tmp_path / "merged")
        merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
        torch.testing.assert_close(merged(input_ids=ids).logits, trained, atol=1e-4, rtol=0)
    assert merged.config.use_cache  # inference keeps its KV cache
    assert (merged_dir / "chat_template.jinja").is_file()
    assert merged.generation_config.eos_token_id == tuner.tokenizer.eos_token_id


def test_instruction_training_learns_to_stop(tmp_path: Path, tiny_llama: Path) -> None:
    """After memorising one answer, greedy generation reproduces it and then stops at EOS."""
    config = make_config(tmp_path, tiny_llama, **{"training.max_steps": 60})
    tuner = lora_tuner(config)
    records = [{"instruction": "Ratio?", "input": "", "output": "Three browns to one green."}]
    tuner.train(training_data(tuner, records * 2, tmp_path), output_dir=tmp_path / "run")
    prompt = tuner.tokenizer.apply_chat_template(
        [{"role": "user", "content": "Ratio?"}], tokenize=False, add_generation_prompt=True
    )
    (answer,) = tuner.generate([prompt], max_new_tokens=30)
    assert answer == "Three browns to one green."


# -------------------------------------------------------------------------------- resume


def _fail_at_step(monkeypatch: pytest.MonkeyPatch, step: int, exc: BaseException) -> None:
    from transformers import Trainer

    original = Trainer.training_step

    def training_step(self, *args, **kwargs):
        if self.state.global_step == step:
            raise exc
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "training_step", training_step)


def test_killed_and_resumed_run_ends_like_an_uninterrupted_one(
    tmp_path: Path, tiny_llama: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    overrides = {"training.max_steps": 6, "training.save_steps": 2, "training.num_epochs": 3}
    straight = make_config(tmp_path / "a", tiny_llama, **overrides)
    tuner = lora_tuner(straight)
    tuner.train(
        training_data(tuner, MEMORISE_RECORDS, tmp_path / "a"), output_dir=tmp_path / "a" / "run"
    )

    broken = make_config(tmp_path / "b", tiny_llama, **overrides)
    tuner = lora_tuner(broken)
    dataset = training_data(tuner, MEMORISE_RECORDS, tmp_path / "b")
    with monkeypatch.context() as patch:
        _fail_at_step(patch, 5, RuntimeError("killed"))  # no chance to save: like SIGKILL
        with pytest.raises(RuntimeError, match="killed"):
            tuner.train(dataset, output_dir=tmp_path / "b" / "run")
    assert sorted(p.name for p in (tmp_path / "b" / "run").glob("checkpoint-*")) == [
        "checkpoint-2",
        "checkpoint-4",
    ]
    tuner = lora_tuner(broken)
    result = tuner.train(
        training_data(tuner, MEMORISE_RECORDS, tmp_path / "b"),
        output_dir=tmp_path / "b" / "run",
        resume=True,
    )
    assert result.resumed_from.endswith("checkpoint-4")
    expected, resumed = train_losses(tmp_path / "a" / "run"), train_losses(tmp_path / "b" / "run")
    assert sorted(resumed) == [1, 2, 3, 4, 5, 6]  # steps after the checkpoint were logged again
    assert resumed[6] == pytest.approx(expected[6], abs=1e-5)


def test_ctrl_c_saves_a_checkpoint_and_exits_130(
    run_main, tmp_path: Path, tiny_llama: Path, samples_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "run"
    argv = [
        "train-lora",
        "--model-name",
        tiny_llama,
        "--output-dir",
        out,
        "--max-steps",
        "6",
        "--train-data",
        samples_dir / "datasets" / "chat.jsonl",
    ]
    with monkeypatch.context() as patch:
        _fail_at_step(patch, 3, KeyboardInterrupt())
        status, _, err = run_main(*argv)
    assert status == 130
    assert (out / "checkpoint-3" / "adapter_model.safetensors").is_file()
    assert (out / "checkpoint-3" / "early_stopping.json").is_file()  # --resume keeps its state
    status, _, err = run_main(*argv)
    assert status == 2 and "--resume" in err  # refuses to start over on top of a run
    status, out_text, err = run_main(*argv, "--resume")
    assert status == 0, err
    assert "6 steps" in out_text


def test_nan_loss_stops_with_training_error_and_keeps_the_checkpoint(
    tmp_path: Path, tiny_llama: Path
) -> None:
    import torch
    from safetensors.torch import load_file
    from transformers import TrainerCallback

    config = make_config(
        tmp_path, tiny_llama, **{"training.max_steps": 8, "training.save_steps": 2}
    )
    tuner = lora_tuner(config)
    dataset = training_data(tuner, MEMORISE_RECORDS, tmp_path)

    class Poison(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3:
                with torch.no_grad():
                    for name, param in tuner.model.named_parameters():
                        if "lora_B" in name:
                            param.fill_(float("nan"))

    with pytest.raises(TrainingError, match=r"loss became nan at step 4 .*checkpoint-2"):
        tuner.train(dataset, output_dir=tmp_path / "run", callbacks=[Poison()])
    weights = load_file(str(tmp_path / "run" / "checkpoint-2" / "adapter_model.safetensors"))
    assert all(torch.isfinite(w).all() for w in weights.values())
    assert not (tmp_path / "run" / "checkpoint-4").exists()


# -------------------------------------------------------------------------------- target modules


def test_auto_target_modules_cover_every_linear_layer(tiny_llama: Path, tiny_gpt2: Path) -> None:
    from transformers import AutoModelForCausalLM

    from training_methods.transfer_learning.lora_model import (
        find_linear_module_names,
        uses_conv1d,
    )

    llama = AutoModelForCausalLM.from_pretrained(tiny_llama)
    assert find_linear_module_names(llama) == [
        "down_proj",
        "gate_proj",
        "k_proj",
        "o_proj",
        "q_proj",
        "up_proj",
        "v_proj",
    ]
    gpt2 = AutoModelForCausalLM.from_pretrained(tiny_gpt2)
    assert find_linear_module_names(gpt2) == ["c_attn", "c_fc", "c_proj"]
    assert uses_conv1d(gpt2) and not uses_conv1d(llama)


def test_gpt2_without_pad_or_template_trains(tmp_path: Path, tiny_gpt2: Path) -> None:
    config = make_config(tmp_path, tiny_gpt2, **{"training.max_steps": 3})
    tuner = lora_tuner(config)
    records = [
        {
            "messages": [
                {"role": "user", "content": "add"},
                {"role": "assistant", "content": "a + b"},
            ]
        }
    ]
    tuner.train(training_data(tuner, records * 2, tmp_path), output_dir=tmp_path / "run")
    adapter = json.loads((tmp_path / "run" / "adapter_config.json").read_text())
    assert sorted(adapter["target_modules"]) == ["c_attn", "c_fc", "c_proj"]
    assert adapter["fan_in_fan_out"] is True
    # The default template travels with the adapter, so chat and export use what was trained.
    assert "### Response:" in (tmp_path / "run" / "chat_template.jinja").read_text()


def test_unknown_target_module_lists_the_real_ones(tmp_path: Path, tiny_llama: Path) -> None:
    config = make_config(tmp_path, tiny_llama, target_modules=["q_proj", "c_attn"])
    with pytest.raises(ConfigurationError, match=r"c_attn not in .*q_proj"):
        lora_tuner(config).model  # noqa: B018


# -------------------------------------------------------------------------------- QLoRA


def test_qlora_trains_lora_on_4bit_layers_on_cpu(tmp_path: Path, tiny_llama: Path) -> None:
    import bitsandbytes as bnb
    import torch

    from training_methods.transfer_learning.finetuning.qlora_finetuner import QLoRAFineTuner

    config = make_config(tmp_path, tiny_llama, "qlora", **{"training.max_steps": 4})
    tuner = QLoRAFineTuner.from_config(config)
    model = tuner.model
    four_bit = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(four_bit) == 2 * 7  # every linear layer of both blocks
    assert four_bit[0].weight.quant_type == "nf4"
    assert four_bit[0].weight.quant_state.nested  # double quantization
    assert four_bit[0].compute_dtype == torch.float32  # auto on CPU
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    tuner.train(training_data(tuner, MEMORISE_RECORDS, tmp_path), output_dir=tmp_path / "run")
    after = dict(model.named_parameters())
    assert any(not torch.equal(before[n], after[n]) for n in before)
    adapter = json.loads((tmp_path / "run" / "adapter_config.json").read_text())
    assert (adapter["r"], adapter["lora_alpha"]) == (64, 16)


def test_qlora_quantization_keys_change_the_layers(tmp_path: Path, tiny_llama: Path) -> None:
    import bitsandbytes as bnb
    import torch

    from training_methods.transfer_learning.finetuning.qlora_finetuner import QLoRAFineTuner

    config = make_config(
        tmp_path,
        tiny_llama,
        "qlora",
        **{
            "quantization.bnb_4bit_quant_type": "fp4",
            "quantization.bnb_4bit_use_double_quant": False,
            "quantization.bnb_4bit_compute_dtype": "bfloat16",
        },
    )
    layer = next(
        m
        for m in QLoRAFineTuner.from_config(config).model.modules()
        if isinstance(m, bnb.nn.Linear4bit)
    )
    assert layer.weight.quant_type == "fp4"
    assert not layer.weight.quant_state.nested
    assert layer.compute_dtype == torch.bfloat16
    plain = make_config(tmp_path, tiny_llama, "qlora", **{"quantization.load_in_4bit": False})
    model = QLoRAFineTuner.from_config(plain).model
    assert not any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())


def test_qlora_without_bitsandbytes_says_so(
    tmp_path: Path, tiny_llama: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    from training_methods.transfer_learning.finetuning.qlora_finetuner import QLoRAFineTuner

    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    config = make_config(tmp_path, tiny_llama, "qlora")
    with pytest.raises(ConfigurationError, match="needs bitsandbytes.*train-lora"):
        QLoRAFineTuner.from_config(config)


def test_paged_8bit_optimizer_needs_cuda(tmp_path: Path, tiny_llama: Path) -> None:
    from training_methods.transfer_learning.finetuning.qlora_finetuner import QLoRAFineTuner

    tuner = QLoRAFineTuner.from_config(make_config(tmp_path, tiny_llama, "qlora"))
    assert tuner.optimizer_name() == "adamw_torch"  # auto on CPU
    tuner.config.transfer_learning.qlora.training.optim = "paged_adamw_8bit"
    with pytest.raises(ConfigurationError, match="needs CUDA"):
        tuner.optimizer_name()
