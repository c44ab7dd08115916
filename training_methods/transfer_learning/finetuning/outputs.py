"""What a fine-tuning run leaves in its output folder besides the checkpoints: the adapter and
tokenizer, `resolved_config.yaml`, `training_summary.json` (`TrainResult`), `loss.png`, and
`samples.txt`, greedy generations for a few prompts of the data next to their references.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared_utils.chat_templates import render_chat_template
from shared_utils.file_utils import atomic_write_json, atomic_write_text
from shared_utils.training_tokens import CHARS_PER_TOKEN_GUESS
from training_methods.transfer_learning.finetuning.trainer import perplexity

if TYPE_CHECKING:
    import datasets
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from shared_utils.data_loader import DataLoaderFactory

SAMPLE_MAX_NEW_TOKENS = 48


@dataclass
class TrainResult:
    """What a training run produced; also written as training_summary.json."""

    output_dir: str
    global_step: int
    train_loss: float | None
    eval_loss: float | None
    eval_perplexity: float | None
    best_eval_loss: float | None
    best_step: int | None
    stopped_early: bool
    restored_best: bool
    resumed_from: str | None
    train_runtime_s: float
    train_samples_per_second: float | None
    train_examples: int
    eval_examples: int
    epochs: float
    epochs_reason: str  # why epochs differ from training.num_epochs; empty when they do not
    peak_rss_mb: float
    cuda_peak_allocated_mb: float | None
    data: dict[str, Any] = field(default_factory=dict)


def train_result(
    output_dir: Path,
    global_step: int,
    train_metrics: Mapping[str, Any],
    final_eval: Mapping[str, Any],
    stopping: Any,
    data: DataLoaderFactory,
    *,
    restored: bool,
    resumed_from: Path | None,
    runtime: float,
    examples: tuple[int, int],
    epochs: tuple[float, str],
) -> TrainResult:
    """The summary of a finished run: the Trainer's `train_metrics`, the final evaluation's
    metrics, the early-stopping callback `stopping`, what `data` read and tokenised, and the
    run's (train, eval) example counts and (epochs, why) as given."""
    from shared_utils.training_utils import cuda_peak_allocated_mb, peak_rss_mb

    eval_loss = final_eval.get("eval_loss")
    return TrainResult(
        output_dir=str(output_dir),
        global_step=global_step,
        train_loss=train_metrics.get("train_loss"),
        eval_loss=eval_loss,
        eval_perplexity=perplexity(eval_loss) if "eval_loss" in final_eval else None,
        best_eval_loss=stopping.stopper.best,
        best_step=stopping.stopper.best_step,
        stopped_early=stopping.stopped_early,
        restored_best=restored,
        resumed_from=str(resumed_from) if resumed_from else None,
        train_runtime_s=round(runtime, 3),
        train_samples_per_second=train_metrics.get("train_samples_per_second"),
        train_examples=examples[0],
        eval_examples=examples[1],
        epochs=epochs[0],
        epochs_reason=epochs[1],
        peak_rss_mb=round(peak_rss_mb(), 1),
        cuda_peak_allocated_mb=cuda_peak_allocated_mb(),
        data={
            "files": [asdict(stats) for stats in data.read_stats],
            **data.tokenize_stats.as_dict(),
        },
    )


def write_summary_files(
    output_dir: Path,
    result: TrainResult,
    metrics_logger: Any,
    resolved_config: str,
    title: str,
) -> None:
    """resolved_config.yaml, training_summary.json and the loss plot of a finished run."""
    atomic_write_text(output_dir / "resolved_config.yaml", resolved_config)
    atomic_write_json(output_dir / "training_summary.json", asdict(result))
    metrics_logger.plot(
        output_dir / "loss.png",
        series=[("train", "loss"), ("eval", "loss")],
        title=title,
        ylabel="loss",
    )


def write_samples(
    output_dir: Path, pairs: Sequence[tuple[str, str]], generations: Sequence[str]
) -> None:
    """samples.txt: each prompt with its reference and the model's generation."""
    blocks = [
        f"### Prompt {i}\n{prompt}\n### Reference\n{reference}\n### Generation\n{text}\n"
        for i, ((prompt, reference), text) in enumerate(zip(pairs, generations, strict=True), 1)
    ]
    atomic_write_text(output_dir / "samples.txt", "\n".join(blocks))


def sample_prompts(
    tokenizer: PreTrainedTokenizerBase,
    rows: datasets.Dataset | None,
    count: int,
    max_length: int,
) -> list[tuple[str, str]]:
    """Up to `count` (prompt, reference) pairs from normalised rows: a conversation up to its
    first response and that response, or the first words of a text and the words after."""
    if rows is None or count <= 0 or "messages" not in rows.column_names:
        return []
    # Training saw at most max_length tokens of a record; a huge one is cut alike here.
    limit = max_length * CHARS_PER_TOKEN_GUESS
    pairs = []
    for row in rows.select(range(min(count, len(rows)))):
        messages = [{**m, "content": m["content"][:limit]} for m in row["messages"]]
        if messages:
            first = next(i for i, m in enumerate(messages) if m["role"] == "assistant")
            prompt = render_chat_template(tokenizer, messages[:first], add_generation_prompt=True)
            pairs.append((prompt, messages[first]["content"]))
        else:
            words = (row["prompt"][:limit] + row["completion"][:limit]).split()
            pairs.append((" ".join(words[:12]), " ".join(words[12:60])))
    return pairs


def greedy_generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    max_length: int,
    max_new_tokens: int = SAMPLE_MAX_NEW_TOKENS,
) -> list[str]:
    """Greedy continuations of `prompts`, without the prompt text; the model's train/eval mode
    is restored afterwards."""
    import torch

    was_training = model.training
    model.eval()
    outputs = []
    bos = tokenizer.bos_token
    try:
        for prompt in prompts:
            # The end of an overlong prompt (where the answer starts), at most max_length
            # tokens of it, as in training.
            prompt = prompt[-max_length * CHARS_PER_TOKEN_GUESS :]
            encoded = tokenizer(
                prompt,
                return_tensors="pt",
                add_special_tokens=not (bos and prompt.startswith(bos)),
            )
            encoded = {k: v[:, -max_length:].to(model.device) for k, v in encoded.items()}
            with torch.no_grad():
                generated = model.generate(
                    **encoded,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    pad_token_id=tokenizer.pad_token_id,
                )
            new_tokens = generated[0, encoded["input_ids"].shape[1] :]
            outputs.append(tokenizer.decode(new_tokens, skip_special_tokens=True))
    finally:
        model.train(was_training)
    return outputs
