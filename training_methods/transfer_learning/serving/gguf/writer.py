"""A Hugging Face causal-LM folder → one GGUF file, the format llama.cpp, LM Studio and Ollama run.

Written with `gguf`, the llama.cpp project's own GGUF writer, doing what llama.cpp's
`convert_hf_to_gguf.py` does for the architectures the toolkit fine-tunes (`architectures`).
The tensors and their types are planned in `tensors`, the tokenizer metadata comes from
`tokenizer` (`sentencepiece` for tokenizer.model), and `lora` writes an adapter
alone. The file itself is written by `file`.

The k-quants `q4_k_m`, `q5_k_m` and `q6_k` (256-value super-blocks with quantised per-block
scales; `_m` mixes in 6-bit tensors where they matter most) are made by llama.cpp's own quantiser
(`llama_model_quantize`, through llama-cpp-python) from an f16 file: the requested f16 when there
is one, else a temporary one removed afterwards. `write_ggufs` writes several types from one model
folder, so an export merges once.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared_utils.errors import ConfigurationError, LLMToolkitError
from shared_utils.llama_cpp_runtime import import_llama_cpp, llama_cpp_log
from training_methods.transfer_learning.serving.gguf.architectures import (
    add_hyperparameters,
    check_model_config,
)
from training_methods.transfer_learning.serving.gguf.file import (
    GGUFSummary,
    atomic_path,
    check_free_space,
    declare_tensors,
    stream_tensors,
)
from training_methods.transfer_learning.serving.gguf.sentencepiece import (
    SentencePieceVocab,
    read_sentencepiece,
)
from training_methods.transfer_learning.serving.gguf.tensors import (
    GGUF_TYPES,
    LLAMA_CPP_TYPES,
    NUMPY_TYPES,
    CheckpointTensors,
    GGUFType,
    TensorPlan,
    plan_tensors,
)
from training_methods.transfer_learning.serving.gguf.tokenizer import (
    GPT4O_CAPITALS_WARNING,
    add_tokenizer,
    is_sentencepiece_bpe,
    tokenizer_pre_name,
    tokenizer_spec,
)

if TYPE_CHECKING:
    from gguf import GGUFWriter
    from transformers import PretrainedConfig, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)


def check_exportable(
    config: PretrainedConfig,
    tokenizer: PreTrainedTokenizerBase,
    where: str,
    tokenizer_dirs: Sequence[Path] = (),
) -> tuple[str, str, SentencePieceVocab | None]:
    """(llama.cpp architecture, pre-tokenizer name, the SentencePiece vocabulary or None for
    byte-level BPE) when the GGUF writer can convert this model; a ConfigurationError otherwise.
    Cheap: reads configs and the tokenizer only, so it runs before any large write.
    `tokenizer_dirs`: folders searched, in order, for the tokenizer.model of a SentencePiece
    tokenizer (save_pretrained of transformers 5 does not copy it into a fine-tune's folder)."""
    arch = check_model_config(config, where)
    spec = tokenizer_spec(tokenizer, where)
    sentencepiece: SentencePieceVocab | None = None
    if is_sentencepiece_bpe(spec):
        sentencepiece = read_sentencepiece(tokenizer, config.vocab_size, tokenizer_dirs, where)
        pre = "default"  # llama.cpp's SentencePiece tokenizer has no pre-tokenizer
    else:
        pre = tokenizer_pre_name(spec, where)
    if tokenizer.eos_token_id is None:
        raise ConfigurationError(
            f"{where}: the tokenizer has no EOS token; llama.cpp would never stop generating — "
            "set eos_token in tokenizer_config.json"
        )
    return arch, pre, sentencepiece


def check_gguf_types(gguf_types: Sequence[str]) -> None:
    """ConfigurationError for an unknown type, or for a k-quant where llama-cpp-python (whose
    quantiser makes them) cannot be imported. Cheap: runs before anything is written."""
    for gguf_type in gguf_types:
        if gguf_type not in GGUF_TYPES:
            raise ConfigurationError(f"--gguf-type {gguf_type}: use one of {', '.join(GGUF_TYPES)}")
    for gguf_type in gguf_types:
        if gguf_type in LLAMA_CPP_TYPES:
            _import_llama_cpp(gguf_type)
            return


def _import_llama_cpp(gguf_type: str) -> Any:
    return import_llama_cpp(
        f"--gguf-type {gguf_type}: the k-quants are made by llama.cpp's quantiser",
        f"or choose one of {', '.join(NUMPY_TYPES)}",
    )


@dataclass(frozen=True)
class ExportableModel:
    """A model folder whose configs passed `check_exportable`."""

    model_dir: Path
    config: PretrainedConfig
    tokenizer: PreTrainedTokenizerBase
    arch: str
    pre: str
    sentencepiece: SentencePieceVocab | None = None

    @classmethod
    def read(cls, model_dir: Path, tokenizer_dirs: Sequence[Path] = ()) -> ExportableModel:
        from transformers import AutoConfig, AutoTokenizer

        try:
            config = AutoConfig.from_pretrained(model_dir)
            tokenizer = AutoTokenizer.from_pretrained(model_dir)
        except (OSError, ValueError) as exc:
            from training_methods.transfer_learning.model_loading import model_not_found

            raise model_not_found(str(model_dir), exc) from None
        folders = [model_dir, *tokenizer_dirs, *_merge_base_dir(model_dir)]
        arch, pre, sentencepiece = check_exportable(config, tokenizer, str(model_dir), folders)
        if sentencepiece is not None and sentencepiece.prefix_differences:
            logger.warning(
                "%s: llama.cpp, like sentencepiece, puts a '▁' before %s, where this "
                "transformers tokenizer does not: there llama.cpp's prompts have one token more",
                model_dir,
                " and before ".join(sentencepiece.prefix_differences),
            )
        if pre == "gpt-4o":
            logger.warning(GPT4O_CAPITALS_WARNING, model_dir)
        return cls(model_dir, config, tokenizer, arch, pre, sentencepiece)


def _merge_base_dir(model_dir: Path) -> list[Path]:
    """The base model folder a merge output records in merge_info.json (where the tokenizer.model
    that save_pretrained does not copy still is), when it is a local folder."""
    info = model_dir / "merge_info.json"
    try:
        base = json.loads(info.read_text(encoding="utf-8")).get("base_model")
    except (OSError, ValueError):
        return []
    return [Path(base)] if isinstance(base, str) and Path(base).is_dir() else []


# --------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------


def write_gguf(
    model_dir: str | Path,
    output_path: str | Path,
    gguf_type: GGUFType = "f16",
    *,
    name: str | None = None,
    progress: bool = True,
    tokenizer_dirs: Sequence[Path] = (),
) -> GGUFSummary:
    """Convert the model folder `model_dir` (config.json, *.safetensors, tokenizer.json) into the
    single file `output_path`, replacing it atomically. Raises ConfigurationError for a model the
    writer cannot convert, before anything is written. `tokenizer_dirs`: more folders to find a
    SentencePiece tokenizer.model in (the adapter's, the base model's)."""
    return write_ggufs(
        model_dir,
        {gguf_type: Path(output_path)},
        name=name,
        progress=progress,
        tokenizer_dirs=tokenizer_dirs,
    )[0]


def write_ggufs(
    model_dir: str | Path,
    outputs: Mapping[GGUFType, Path],
    *,
    name: str | None = None,
    progress: bool = True,
    tokenizer_dirs: Sequence[Path] = (),
) -> list[GGUFSummary]:
    """One GGUF file per type (`outputs`: type → path) from one model folder, in the order given.
    The k-quants are quantised by llama.cpp from the f16 file when one is requested, else from a
    temporary f16 file next to the first of them, removed afterwards."""
    check_gguf_types(list(outputs))
    model = ExportableModel.read(Path(model_dir), tokenizer_dirs)
    written: dict[str, GGUFSummary] = {}
    for gguf_type, path in outputs.items():
        if gguf_type in NUMPY_TYPES:
            written[gguf_type] = _write_numpy(model, Path(path), gguf_type, name, progress)
    kquants = [gguf_type for gguf_type in outputs if gguf_type in LLAMA_CPP_TYPES]
    if kquants:
        source = written.get("f16")
        temporary: Path | None = None
        if source is None:
            first = Path(outputs[kquants[0]])
            first.parent.mkdir(parents=True, exist_ok=True)
            fd, name_tmp = tempfile.mkstemp(
                prefix=f".{first.name}.", suffix=".f16.tmp", dir=first.parent
            )
            os.close(fd)
            temporary = Path(name_tmp)
        try:
            if temporary is not None:
                source = _write_numpy(model, temporary, "f16", name, progress, announce=False)
            assert source is not None
            for gguf_type in kquants:
                summary = quantize_gguf(source.path, Path(outputs[gguf_type]), gguf_type)
                if temporary is not None:  # the f16 made for it is part of its cost
                    summary.seconds = round(summary.seconds + source.seconds, 3)
                written[gguf_type] = summary
        finally:
            if temporary is not None:
                with contextlib.suppress(FileNotFoundError):
                    temporary.unlink()
    return [written[gguf_type] for gguf_type in outputs]


def _write_numpy(
    model: ExportableModel,
    output_path: Path,
    gguf_type: GGUFType,
    name: str | None,
    progress: bool,
    *,
    announce: bool = True,
) -> GGUFSummary:
    """Write one file of a NUMPY_TYPES type, streamed tensor by tensor; `announce`: log it (not
    the temporary f16 a k-quant is made from)."""
    where = str(model.model_dir)
    config = model.config
    started = time.monotonic()
    checkpoint = CheckpointTensors(model.model_dir)
    try:
        plans = plan_tensors(model.arch, config, checkpoint, gguf_type, where)
        writer = _prepared_writer(model, plans, gguf_type, name)
        data_bytes = sum(plan.nbytes for plan in plans)
        check_free_space(output_path, data_bytes)
        with atomic_path(output_path) as staging:
            try:
                stream_tensors(writer, staging, plans, checkpoint, config, progress)
            except OSError as exc:
                raise LLMToolkitError(
                    f"{output_path}: writing the GGUF file failed ({exc.strerror or exc}); "
                    f"nothing was left under that name — free about {data_bytes / 1e6:.0f} MB "
                    "in its folder or choose another --output, then export again"
                ) from exc
            finally:
                writer.close()
    finally:
        checkpoint.close()
    if announce:
        logger.info("wrote %s (%s, %d tensors)", output_path, gguf_type, len(plans))
    return GGUFSummary(
        path=output_path,
        gguf_type=gguf_type,
        architecture=model.arch,
        tokenizer_pre=model.pre,
        tensor_count=len(plans),
        size_bytes=output_path.stat().st_size,
        seconds=round(time.monotonic() - started, 3),
        tensor_types=dict(Counter(plan.qtype.name for plan in plans)),
    )


def quantize_gguf(source: Path, output_path: Path, gguf_type: GGUFType) -> GGUFSummary:
    """Quantise the f16 GGUF `source` into `output_path` with llama.cpp's own quantiser (the
    `llama-quantize` tool's code, with its per-tensor choices), replacing it atomically."""
    import ctypes

    from gguf import GGUFReader

    llama_cpp = _import_llama_cpp(gguf_type)
    started = time.monotonic()
    # The k-quants need less than half of f16's bits; the check wants an upper bound.
    check_free_space(output_path, source.stat().st_size // 2)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, LLAMA_CPP_TYPES[gguf_type])
    with atomic_path(output_path) as staging:
        with llama_cpp_log() as log:
            status = llama_cpp.llama_model_quantize(
                os.fsencode(source), os.fsencode(staging), ctypes.byref(params)
            )
        if status != 0:
            failures = [line for line in log if "fail" in line] or log or [f"status {status}"]
            reason = failures[-1]
            raise LLMToolkitError(
                f"{output_path}: llama.cpp could not quantise {source.name} to {gguf_type} "
                f"({reason}); nothing was left under that name — if the disk is full, free about "
                f"{source.stat().st_size / 2e6:.0f} MB in its folder, then export again"
            )
        with open(staging, "rb") as handle:
            os.fsync(handle.fileno())
    reader = GGUFReader(output_path)
    types = Counter(tensor.tensor_type.name for tensor in reader.tensors)
    arch = str(reader.fields["general.architecture"].contents())
    pre = str(reader.fields["tokenizer.ggml.pre"].contents())
    count = len(reader.tensors)
    del reader  # its memory map
    logger.info("wrote %s (%s, %d tensors)", output_path, gguf_type, count)
    return GGUFSummary(
        path=output_path,
        gguf_type=gguf_type,
        architecture=arch,
        tokenizer_pre=pre,
        tensor_count=count,
        size_bytes=output_path.stat().st_size,
        seconds=round(time.monotonic() - started, 3),
        tensor_types=dict(types),
    )


def _prepared_writer(
    model: ExportableModel,
    plans: Sequence[TensorPlan],
    gguf_type: GGUFType,
    name: str | None,
) -> GGUFWriter:
    """A GGUFWriter holding every key and the index of every tensor, nothing written yet."""
    from gguf import GGUFWriter

    where = str(model.model_dir)
    writer = GGUFWriter(path=None, arch=model.arch)
    writer.add_name(name or model.model_dir.name)
    add_hyperparameters(writer, model.arch, model.config, gguf_type)
    add_tokenizer(writer, model.tokenizer, model.config, model.pre, where, model.sentencepiece)
    declare_tensors(writer, plans)
    return writer
