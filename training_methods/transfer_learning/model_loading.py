"""Finding and loading the model a command names: a local folder, a hub id, or a `.gguf` file.

Every command that takes a model (`train-lora`, `train-qlora`, `merge`, `export`, `chat`,
`evaluate`) loads it through this module, so each accepts the same three forms:

- a folder written by `save_pretrained` (absolute paths are recorded in adapters);
- a Hugging Face hub id, which offline works once it is in the Hugging Face cache;
- a GGUF file, the form LM Studio and Ollama users already have on disk. transformers reads it
  (`from_pretrained(folder, gguf_file=name)`) and dequantises it to floating point, which takes a
  while; the result is saved once as a plain model folder in the toolkit's cache, keyed by the
  file's content hash, so later loads are as fast as any local folder. Adapters record the GGUF
  path itself as their base, so `merge`, `export` and `chat` find the same file again.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared_utils.errors import ConfigurationError
from shared_utils.file_utils import sha256_file

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

GGUF_SUFFIX = ".gguf"
CACHE_ENV = "LLM_TOOLKIT_CACHE"
SOURCE_FILE = "gguf_source.json"  # written into each cached folder: which file it came from


def model_not_found(model_name: str, exc: Exception) -> ConfigurationError:
    """The one-line error for a model that cannot be loaded."""
    detail = str(exc).splitlines()[0] if str(exc) else "not found"
    return ConfigurationError(
        f"model {model_name!r} could not be loaded ({type(exc).__name__}: {detail}) — give a "
        "local folder made with save_pretrained, a .gguf file, or a hub id; offline, hub ids "
        "only work once cached (`python main.py create-samples` builds data/models/tiny-llama)"
    )


def is_gguf(model_name: str | Path) -> bool:
    return str(model_name).lower().endswith(GGUF_SUFFIX)


def recorded_name(model_name: str) -> str:
    """How a run records its base: local folders and GGUF files absolute, hub ids as given."""
    path = Path(model_name)
    if path.is_dir() or (is_gguf(model_name) and path.is_file()):
        return str(path.resolve())
    return model_name


# --------------------------------------------------------------------------------------------------
# Availability: fail in seconds, not after a minute of download retries
# --------------------------------------------------------------------------------------------------


def _hub_reachable(timeout_s: float = 3.0) -> bool:
    import socket
    from urllib.parse import urlparse

    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((endpoint.hostname or "huggingface.co", port), timeout_s).close()
    except OSError:
        return False
    return True


def ensure_model_available(model_name: str) -> None:
    """Fail at once when `model_name` is neither a local folder or GGUF file, nor in the Hugging
    Face cache, nor reachable on the hub."""
    if is_gguf(model_name):
        if not Path(model_name).is_file():
            raise model_not_found(model_name, FileNotFoundError("no such GGUF file"))
        return
    if Path(model_name).exists() or os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", ""):
        return  # a local path, or offline mode: from_pretrained answers at once
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(model_name, "config.json")
    except ValueError:  # not a valid repo id either
        cached = None
    if isinstance(cached, str) or _hub_reachable():
        return
    raise model_not_found(
        model_name, OSError("not a local folder, not in the Hugging Face cache, hub unreachable")
    )


# --------------------------------------------------------------------------------------------------
# GGUF files: dequantised once into a cached model folder
# --------------------------------------------------------------------------------------------------


def cache_root() -> Path:
    """$LLM_TOOLKIT_CACHE, else $XDG_CACHE_HOME/llm-complete-toolkit, else ~/.cache/..."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "llm-complete-toolkit"


@functools.lru_cache(maxsize=16)
def _content_hash(path: str, size: int, mtime_ns: int) -> str:
    """The file's SHA-256, once per process for an unchanged file (a command loads the
    tokenizer and the model from the same GGUF; hashing a 4 GB file twice costs seconds)."""
    return sha256_file(path)


def gguf_cache_dir(gguf_path: Path) -> Path:
    stat = gguf_path.stat()
    digest = _content_hash(str(gguf_path.resolve()), stat.st_size, stat.st_mtime_ns)
    return cache_root() / "gguf" / digest[:24]


def _dequantise_gguf(gguf_path: Path, target: Path) -> None:
    """Load the GGUF with transformers and save it as a float16 safetensors folder at `target`
    (staged in a temporary folder and renamed, so a crash never leaves a half-written cache)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    logger.info(
        "reading %s with transformers (dequantising; the result is cached in %s)",
        gguf_path,
        target,
    )
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float16)
    except Exception as exc:  # noqa: BLE001 - any reader failure is one line for the user
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigurationError(
            f"{gguf_path}: transformers cannot read this GGUF ({detail}) — use a GGUF of an "
            "architecture transformers supports (Llama, Mistral, Qwen2, Qwen3, Gemma, Phi-3, "
            "...) or the model's Hugging Face folder"
        ) from None
    # transformers marks a model read from GGUF as quantized and refuses to save it; the weights
    # are plain floats by now, so they move into an ordinary model built from the same config.
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float16)
    plain.load_state_dict(model.state_dict(), assign=True)
    plain.tie_weights()
    del model
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        plain.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / SOURCE_FILE).write_text(
            json.dumps({"gguf_file": str(gguf_path.resolve())}, indent=2) + "\n",
            encoding="utf-8",
        )
        try:
            staging.rename(target)
        except OSError:
            if not (target / SOURCE_FILE).is_file():  # not another process's finished copy
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def resolve_model_path(model_name: str) -> str:
    """What `from_pretrained` should read for `model_name`: the cached folder for a GGUF file
    (made on first use), else `model_name` unchanged."""
    ensure_model_available(model_name)
    if not is_gguf(model_name):
        return model_name
    gguf_path = Path(model_name)
    target = gguf_cache_dir(gguf_path)
    if not (target / SOURCE_FILE).is_file():
        _dequantise_gguf(gguf_path, target)
    return str(target)


# --------------------------------------------------------------------------------------------------
# Loaders
# --------------------------------------------------------------------------------------------------


def load_tokenizer(model_name: str) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    path = resolve_model_path(model_name)
    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise model_not_found(model_name, exc) from None


def load_model_config(model_name: str) -> PretrainedConfig:
    from transformers import AutoConfig

    path = resolve_model_path(model_name)
    try:
        return AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise model_not_found(model_name, exc) from None


def load_causal_lm(model_name: str, **kwargs: Any) -> PreTrainedModel:
    """`AutoModelForCausalLM.from_pretrained` on the resolved path; one-line error on failure."""
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM

    path = resolve_model_path(model_name)
    try:
        return AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except SafetensorError as exc:
        raise damaged_weights(f"model {model_name!r}", exc) from None
    except (OSError, ValueError) as exc:
        raise model_not_found(model_name, exc) from None


def merge_adapter_weights(model: PreTrainedModel, adapter_dir: str | Path) -> PreTrainedModel:
    """The LoRA adapter in `adapter_dir` merged into `model`; one-line error when its weights
    file is damaged."""
    from peft import PeftModel
    from safetensors import SafetensorError

    try:
        return PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    except SafetensorError as exc:
        raise damaged_weights(f"adapter '{adapter_dir}'", exc) from None


def damaged_weights(what: str, exc: Exception) -> ConfigurationError:
    """The one-line error for a safetensors file that cannot be read (a bad header, cut short)."""
    detail = str(exc).splitlines()[0] if str(exc) else "unreadable"
    return ConfigurationError(
        f"{what} has a damaged .safetensors weights file ({detail}) — copy or save it again"
    )


@contextlib.contextmanager
def no_loading_bars() -> Iterator[None]:
    """transformers' weight-loading progress bars off for the block (they are global state)."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()
