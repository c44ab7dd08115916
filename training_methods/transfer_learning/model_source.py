"""Which model a command runs: `--model` and `--adapter` -> the base model, the adapter on it and
the tokenizer it was trained with; and that model loaded to answer (the adapter merged in).

`export`, `chat` and `evaluate` name their model through here, so each reads the two options
alike: an adapter finds its base in adapter_config.json unless `--model` names another, and
`--model` alone is a model used as it is.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from shared_utils.errors import ConfigurationError
from training_methods.transfer_learning.merge import ADAPTER_CONFIG, read_adapter_config

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSource:
    """Where the weights come from: a model folder or hub id, and optionally an adapter on it."""

    model: str  # the base (with an adapter) or the already merged model
    adapter: Path | None
    name: str  # what outputs are named after: the adapter's or the model's folder name


def resolve_source(model: str | None, adapter: str | Path | None) -> ModelSource:
    """Check --model/--adapter and name the base model; ConfigurationError when unusable."""
    if adapter is None:
        if model is None:
            raise ConfigurationError(
                "export needs --adapter DIR (a train-lora/train-qlora output) or --model DIR "
                "(an already merged model)"
            )
        return ModelSource(model=model, adapter=None, name=_stem(model))
    adapter = Path(adapter)
    if not adapter.is_dir():
        raise ConfigurationError(
            f"--adapter {adapter}: no such folder — point it at the output folder of train-lora "
            "or train-qlora"
        )
    adapter_config = read_adapter_config(adapter)  # refuses a folder without adapter_config.json
    base = model or adapter_config.get("base_model_name_or_path")
    if not base:
        raise ConfigurationError(
            f"{adapter / ADAPTER_CONFIG} names no base model — pass the base with --model"
        )
    return ModelSource(model=str(base), adapter=adapter, name=_stem(adapter))


def _stem(path_or_id: str | Path) -> str:
    name = Path(str(path_or_id).rstrip("/")).name or "model"
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name)


def tokenizer_source(source: ModelSource) -> str:
    """The adapter folder when training saved the tokenizer there (with the chat template it
    trained with), else the model."""
    if source.adapter is not None and (source.adapter / "tokenizer_config.json").is_file():
        return str(source.adapter)
    return source.model


def load_for_inference(
    model: str | None, adapter: str | Path | None, device: torch.device
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The model to answer with (adapter merged in, on `device`, in eval mode) and the tokenizer
    it was trained with, which always has a chat template."""
    from shared_utils.chat_templates import ensure_chat_template
    from training_methods.transfer_learning.lora_model import autocast_dtype
    from training_methods.transfer_learning.model_loading import (
        load_causal_lm,
        load_tokenizer,
        merge_adapter_weights,
    )

    source = resolve_source(model, adapter)
    loaded = load_causal_lm(source.model, dtype=autocast_dtype(device))
    tokenizer_from = tokenizer_source(source)
    tokenizer = load_tokenizer(tokenizer_from)
    if source.adapter is not None:
        loaded = merge_adapter_weights(loaded, source.adapter)
    if ensure_chat_template(tokenizer):
        logger.info("%s has no chat template: using the toolkit's default", tokenizer_from)
    loaded.config.use_cache = True
    loaded.to(device).eval()
    return loaded, tokenizer
