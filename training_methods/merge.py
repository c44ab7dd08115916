"""Merge a LoRA adapter into its base model and save a plain transformers model folder.

The base is always reloaded in 16 or 32 bits, never in 4 bits: merging into quantized weights would
round the adapter away. The result loads with plain `AutoModelForCausalLM.from_pretrained` and
carries the tokenizer, its chat template and the generation config (EOS), so it stops where the
fine-tuned model learned to stop.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path

from shared_utils.errors import ConfigurationError
from shared_utils.file_utils import _umask

logger = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
MERGE_DTYPES = ("float32", "float16", "bfloat16")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def read_adapter_config(adapter_dir: Path) -> dict:
    config_path = adapter_dir / ADAPTER_CONFIG
    if not config_path.is_file():
        raise ConfigurationError(
            f"{adapter_dir}: no {ADAPTER_CONFIG} — point --adapter at the output folder of "
            "train-lora or train-qlora"
        )
    try:
        return json.loads(config_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigurationError(f"{config_path}: not valid JSON ({exc.msg})") from None


def merge_adapter(
    adapter_dir: str | Path,
    output_dir: str | Path,
    *,
    base_model: str | None = None,
    dtype: str = "float32",
    force: bool = False,
) -> Path:
    """Write base + adapter as one model to `output_dir` (atomically: a temp folder renamed)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from training_methods.lora_finetuner import _model_not_found, ensure_model_available

    adapter_dir = Path(adapter_dir)
    output_dir = Path(output_dir)
    if dtype not in MERGE_DTYPES:
        raise ConfigurationError(f"--dtype {dtype}: use one of {', '.join(MERGE_DTYPES)}")
    adapter_config = read_adapter_config(adapter_dir)
    base = base_model or adapter_config.get("base_model_name_or_path")
    if not base:
        raise ConfigurationError(
            f"{adapter_dir / ADAPTER_CONFIG} names no base model — pass --base-model"
        )
    if output_dir.resolve() == adapter_dir.resolve() or adapter_dir.resolve().is_relative_to(
        output_dir.resolve()
    ):
        raise ConfigurationError(
            f"--output {output_dir} would replace the adapter folder {adapter_dir} — choose "
            "another --output"
        )
    if output_dir.exists() and any(output_dir.iterdir()) and not force:
        raise ConfigurationError(
            f"{output_dir} already exists and is not empty — choose another --output or pass "
            "--force"
        )
    ensure_model_available(base)
    try:
        model = AutoModelForCausalLM.from_pretrained(base, dtype=getattr(torch, dtype))
    except (OSError, ValueError) as exc:
        raise _model_not_found(base, exc) from None
    model = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
    model.config.use_cache = True  # training switched the KV cache off; inference wants it
    # train-lora saves the tokenizer (and the chat template it trained with) next to the
    # adapter; a plain PEFT adapter or best_adapter/ has none, so take the base model's.
    has_tokenizer = any((adapter_dir / name).is_file() for name in TOKENIZER_FILES)
    tokenizer = AutoTokenizer.from_pretrained(adapter_dir if has_tokenizer else base)

    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.", dir=output_dir.parent))
    staging.chmod(0o777 & ~_umask())  # mkdtemp makes it owner-only; a model folder is not secret
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        if output_dir.exists():
            shutil.rmtree(output_dir)
        staging.rename(output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("merged %s into %s: %s", adapter_dir, base, output_dir)
    return output_dir
