"""Merge a LoRA adapter into its base model and save a plain transformers model folder.

The base is always reloaded in 16 or 32 bits, never in 4 bits: merging into quantized weights would
round the adapter away. The result loads with plain `AutoModelForCausalLM.from_pretrained` and
carries the tokenizer, its chat template and the generation config (EOS), so it stops where the
fine-tuned model learned to stop.

The output folder also gets `merge_info.json`, which lists the files the merge wrote. `--force`
replaces only such a folder (and only while it holds nothing else) or an empty one: never the
base model, the adapter, or a folder of the user's.
"""

from __future__ import annotations

import errno
import json
import logging
import shutil
import tempfile
from pathlib import Path

from shared_utils.errors import ConfigurationError, LLMToolkitError
from shared_utils.file_utils import current_umask

logger = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
MERGE_INFO = "merge_info.json"  # written into every merge output: what --force may replace
MERGE_DTYPES = ("float32", "float16", "bfloat16")
DEFAULT_MERGE_DTYPE = "float32"  # the merged weights unrounded; 16 bits halve the size
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
    dtype: str = DEFAULT_MERGE_DTYPE,
    force: bool = False,
) -> Path:
    """Write base + adapter as one model to `output_dir` (atomically: a temp folder renamed)."""
    import torch
    from transformers import AutoTokenizer

    from training_methods.transfer_learning.model_loading import (
        load_causal_lm,
        load_tokenizer,
        merge_adapter_weights,
    )

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
    check_output_dir(output_dir, adapter_dir, base, force)
    model = load_causal_lm(base, dtype=getattr(torch, dtype))
    model = merge_adapter_weights(model, adapter_dir)
    model.config.use_cache = True  # training switched the KV cache off; inference wants it
    # train-lora saves the tokenizer (and the chat template it trained with) next to the
    # adapter; a plain PEFT adapter or best_adapter/ has none, so take the base model's.
    has_tokenizer = any((adapter_dir / name).is_file() for name in TOKENIZER_FILES)
    tokenizer = (
        AutoTokenizer.from_pretrained(adapter_dir) if has_tokenizer else load_tokenizer(base)
    )

    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.", dir=output_dir.parent))
    # mkdtemp makes it owner-only; a model folder is not secret
    staging.chmod(0o777 & ~current_umask())
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        info = {
            "adapter": str(adapter_dir.resolve()),
            "base_model": base,
            "dtype": dtype,
            "files": sorted(p.name for p in staging.iterdir()) + [MERGE_INFO],
        }
        (staging / MERGE_INFO).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        check_output_dir(output_dir, adapter_dir, base, force)  # again: a minute has passed
        _replace_folder(staging, output_dir)
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if _is_disk_full(exc):
            size = sum(p.numel() * p.element_size() for p in model.parameters())
            raise LLMToolkitError(
                f"{output_dir}: the disk filled up while the merged model was written; nothing "
                f"was left behind — free about {size / 1e6:.0f} MB in {output_dir.parent} or "
                "choose another --output, then merge again"
            ) from None
        raise
    logger.info("merged %s into %s: %s", adapter_dir, base, output_dir)
    return output_dir


def _is_disk_full(exc: BaseException) -> bool:
    """ENOSPC, also as safetensors reports it ("I/O error: No space left on device (os error
    28)")."""
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return True
    return type(exc).__name__ == "SafetensorError" and f"os error {errno.ENOSPC})" in str(exc)


def check_output_dir(output_dir: Path, adapter_dir: Path, base: str, force: bool) -> None:
    """Refuse an output folder whose replacement would lose anything but an earlier merge.

    The folder may not be, contain or lie inside the base model (a local folder or GGUF file),
    nor be or contain the adapter (inside the adapter is fine: `train-lora --merge` writes
    `merged/` there). An existing folder is replaced only when it is empty, or with `--force`
    when it is an earlier merge output: it has `merge_info.json` and holds only the files listed
    there. Anything else, `--force` or not, is a one-line error; the user deletes it by hand.
    """
    out = output_dir.resolve()
    adapter = adapter_dir.resolve()
    if out == adapter or adapter.is_relative_to(out):
        raise ConfigurationError(
            f"--output {output_dir} would replace the adapter folder {adapter_dir} — choose "
            "another --output"
        )
    base_path = Path(base).expanduser()
    if base_path.exists():  # a local folder or GGUF file, not a hub id
        base_path = base_path.resolve()
        if out == base_path or base_path.is_relative_to(out) or out.is_relative_to(base_path):
            where = (
                "is"
                if out == base_path
                else "contains"
                if base_path.is_relative_to(out)
                else "is inside"
            )
            raise ConfigurationError(
                f"--output {output_dir} {where} the base model {base} — the merged model must "
                "go to a folder of its own; choose another --output"
            )
    if not output_dir.exists() and not output_dir.is_symlink():
        return
    if output_dir.is_symlink() or not output_dir.is_dir():
        raise ConfigurationError(
            f"--output {output_dir} exists and is not a folder — choose another --output"
        )
    entries = {entry.name for entry in output_dir.iterdir()}
    if not entries:
        return
    if not force:
        raise ConfigurationError(
            f"{output_dir} already exists and is not empty — choose another --output or pass "
            "--force"
        )
    written = _merge_files(output_dir)
    if written is None:
        raise ConfigurationError(
            f"{output_dir} was not written by merge (it has no {MERGE_INFO}), so --force does "
            "not replace it — delete it yourself or choose another --output"
        )
    foreign = sorted(entries - written)
    if foreign:
        raise ConfigurationError(
            f"{output_dir} holds {foreign[0]!r}, which merge did not write, so --force does not "
            "replace the folder — move that away or choose another --output"
        )


def _merge_files(folder: Path) -> set[str] | None:
    """The names an earlier merge listed in `folder/merge_info.json`; None if it is not one."""
    path = folder / MERGE_INFO
    if path.is_symlink() or not path.is_file():
        return None
    try:
        files = json.loads(path.read_text(encoding="utf-8")).get("files")
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(files, list) or not all(isinstance(name, str) for name in files):
        return None
    return set(files)


def _replace_folder(staging: Path, output_dir: Path) -> None:
    """Move `staging` to `output_dir`; an old `output_dir` is set aside first and deleted only
    once the new one is in place (restored if the move fails)."""
    if not output_dir.exists():
        staging.rename(output_dir)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.old.", dir=output_dir.parent))
    old.rmdir()
    output_dir.rename(old)
    try:
        staging.rename(output_dir)
    except BaseException:
        old.rename(output_dir)
        raise
    shutil.rmtree(old, ignore_errors=True)
