"""QLoRA on CPU with evaluation: bitsandbytes' packed AVX512-BF16 kernel and the layers it skips.

In eval mode on a CPU with AVX512-BF16, bitsandbytes 0.50 repacks a 4-bit layer for a faster
kernel; a layer whose out_features is not a multiple of 32 (or in_features not one of the block
size) used to crash the first evaluation, and a packed layer silently lost its gradient when
training resumed. These tests build a tiny Llama with such a layer (the shipped tiny model's
688-wide MLP) next to layers the kernel takes.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from document_processing import samples
from tests.finetune_helpers import MEMORISE, make_config


def has_avx512bf16() -> bool:
    from bitsandbytes.functional import has_avx512bf16 as check

    return bool(check())


@pytest.fixture(scope="module")
def odd_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama whose MLP is 688 wide: gate/up_proj have 688 outputs (not a multiple
    of 32) and down_proj 688 inputs (not a multiple of 64); attention is 64 wide (packable)."""
    from training_methods.transfer_learning.tiny_model import build_tiny_model

    return build_tiny_model(
        tmp_path_factory.mktemp("odd-llama"),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        intermediate_size=688,
    )


# -------------------------------------------------------------------------------- the shape rule


@pytest.mark.parametrize(
    ("out_features", "in_features", "blocksize", "expected"),
    [
        (256, 256, 64, True),  # tiny model: q_proj, o_proj
        (128, 256, 64, True),  # tiny model: k_proj, v_proj
        (688, 256, 64, False),  # tiny model: gate_proj, up_proj (688 = 21.5 x 32)
        (256, 688, 64, False),  # tiny model: down_proj (688 = 10.75 x 64)
        (1536, 576, 64, True),  # SmolLM2-135M MLP
        (576, 1536, 64, True),
        (192, 576, 64, True),  # SmolLM2-135M k_proj
        (11008, 4096, 64, True),  # Llama-2-7B MLP
        (4096, 11008, 64, True),
        (32, 64, 64, True),
        (48, 64, 64, False),
        (64, 96, 64, False),
        (64, 192, 128, False),
        (64, 256, 128, True),
    ],
)
def test_packed_kernel_shape_rule(
    out_features: int, in_features: int, blocksize: int, expected: bool
) -> None:
    from training_methods.transfer_learning.finetuning.qlora_finetuner import (
        cpu_packed_kernel_supports,
    )

    assert cpu_packed_kernel_supports(out_features, in_features, blocksize) is expected


@pytest.mark.skipif(not has_avx512bf16(), reason="bitsandbytes packs only on AVX512-BF16 CPUs")
def test_shape_rule_is_what_bitsandbytes_packs() -> None:
    """The rule against bitsandbytes itself: an eval-mode forward with packing left on succeeds
    exactly for the shapes the rule accepts, and then agrees with the generic 4-bit path."""
    import bitsandbytes as bnb
    import torch

    from training_methods.transfer_learning.finetuning.qlora_finetuner import (
        cpu_packed_kernel_supports,
    )

    def layer(out_features: int, in_features: int) -> bnb.nn.Linear4bit:
        torch.manual_seed(0)
        module = bnb.nn.Linear4bit(in_features, out_features, bias=False, quant_type="nf4")
        weight = torch.randn(out_features, in_features) * 0.02
        module.weight = bnb.nn.Params4bit(
            weight, requires_grad=False, quant_type="nf4", module=module
        ).to("cpu")
        return module.eval()

    for out_features in (32, 48, 64, 96, 688):
        for in_features in (64, 96, 128, 192, 688):
            x = torch.randn(3, in_features)
            generic = layer(out_features, in_features)
            generic.support_avx512bf16_for_cpu = False
            packed = layer(out_features, in_features)
            with torch.no_grad():
                expected = generic(x)
                try:
                    got = packed(x)
                except (AssertionError, RuntimeError):
                    got = None
            supported = cpu_packed_kernel_supports(out_features, in_features)
            assert (got is not None) is supported, (out_features, in_features)
            if got is not None:
                assert packed.weight.quant_state.packing_format_for_cpu
                torch.testing.assert_close(got, expected, rtol=0.02, atol=0.02)


# -------------------------------------------------------------------------------- train after eval


@pytest.mark.slow
@pytest.mark.parametrize("double_quant", [True, False])
def test_training_after_evaluation_is_exact(
    tmp_path: Path, odd_llama: Path, double_quant: bool
) -> None:
    """An evaluation (and a save) between two training steps changes nothing: the same gradients,
    the same 4-bit weights and scales, whichever kernel each layer took in eval mode."""
    import bitsandbytes as bnb
    import torch

    from training_methods.transfer_learning.finetuning.qlora_finetuner import QLoRAFineTuner

    config = make_config(
        tmp_path,
        odd_llama,
        "qlora",
        lora_dropout=0.0,
        **{"quantization.bnb_4bit_use_double_quant": double_quant},
    )
    tuner = QLoRAFineTuner.from_config(config)
    model = tuner.model
    encoded = tuner.tokenizer(MEMORISE, padding=True, return_tensors="pt")
    labels = encoded["input_ids"].masked_fill(encoded["attention_mask"] == 0, -100)

    def base_state() -> dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in model.state_dict().items() if "lora_" not in k}

    def gradients() -> tuple[float, dict[str, torch.Tensor]]:
        model.train()
        model.zero_grad()
        loss = model(**encoded, labels=labels).loss
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        return loss.item(), grads

    before = base_state()
    loss, grads = gradients()
    model.eval()
    with torch.no_grad():
        eval_loss = model(**encoded, labels=labels).loss.item()
    layers = {
        name.removesuffix(".base_layer").rsplit(".", 1)[-1]: module  # peft wraps each layer
        for name, module in model.named_modules()
        if isinstance(module, bnb.nn.Linear4bit)
    }
    if has_avx512bf16():
        assert layers["q_proj"].weight.quant_state.packing_format_for_cpu  # the fast kernel
        for name in ("gate_proj", "up_proj", "down_proj"):
            assert not layers[name].support_avx512bf16_for_cpu  # the generic path
    assert eval_loss == pytest.approx(loss, rel=1e-2)  # bf16 kernel vs fp32 training path
    assert base_state().keys() == before.keys()  # state_dict() of packed layers: exact
    for key, value in base_state().items():
        assert torch.equal(value, before[key]), key

    model.eval()
    with torch.no_grad():
        model(**encoded, labels=labels)  # packed again; training must unpack it
    loss_after, grads_after = gradients()
    assert loss_after == loss
    for name, grad in grads.items():
        assert torch.equal(grads_after[name], grad), name
    assert not any(
        getattr(m.weight.quant_state, "packing_format_for_cpu", False) for m in layers.values()
    )


# -------------------------------------------------------------------------------- end to end


def write_chat(path: Path, chats: list[list[dict[str, str]]]) -> Path:
    path.write_text("".join(json.dumps({"messages": chat}) + "\n" for chat in chats))
    return path


@pytest.mark.slow
def test_train_qlora_with_evaluation_then_merge_on_cpu(
    run_main, tmp_path: Path, odd_llama: Path
) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    train = write_chat(tmp_path / "train.jsonl", samples.CHATS * 2)
    valid = write_chat(tmp_path / "valid.jsonl", samples.CHATS[:3])
    config = tmp_path / "config.yaml"
    config.write_text(
        f"""
common: {{device: cpu}}
transfer_learning:
  qlora:
    model_name: {odd_llama}
    max_length: 64
    lora_r: 8
    num_samples: 1
    training: {{max_steps: 4, batch_size: 2, learning_rate: 0.005, logging_steps: 1,
                eval_steps: 2, save_steps: 2}}
logging: {{use_tensorboard: false}}
""",
        encoding="utf-8",
    )
    out = tmp_path / "run"
    status, stdout, err = run_main(
        "train-qlora",
        "--config",
        config,
        "--train-data",
        train,
        "--eval-data",
        valid,
        "--output-dir",
        out,
    )
    assert status == 0, err
    assert "train-qlora: 4 steps" in stdout and "eval loss" in stdout
    if has_avx512bf16():
        assert "generic 4-bit path" in err and "gate_proj, up_proj (out 688, in 64)" in err
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    eval_steps = [r["step"] for r in records if r["split"] == "eval" and "loss" in r]
    assert eval_steps == [2, 4]  # evaluations during training, between training steps
    train_steps = [r["step"] for r in records if r["split"] == "train" and "loss" in r]
    assert 3 in train_steps  # a training step after the first evaluation
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["eval_loss"] is not None and summary["eval_loss"] > 0
    assert summary["best_step"] in (2, 4)
    assert (out / "adapter_model.safetensors").stat().st_size > 0
    assert (out / "best_adapter" / "adapter_model.safetensors").is_file()
    assert "### Generation" in (out / "samples.txt").read_text()

    merged = tmp_path / "merged"
    status, stdout, err = run_main("merge", "--adapter", out, "--output", merged)
    assert status == 0, err
    model = AutoModelForCausalLM.from_pretrained(merged)
    tokenizer = AutoTokenizer.from_pretrained(merged)
    prompt = tokenizer.apply_chat_template(
        samples.CHATS[0][:1], tokenize=False, add_generation_prompt=True
    )
    encoded = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    generated = model.generate(
        **encoded,
        max_new_tokens=5,
        min_new_tokens=5,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id,
    )
    assert generated.shape[1] == encoded["input_ids"].shape[1] + 5
