"""The `export` command: an adapter (or a merged model) → a merged folder and/or one GGUF file.

    export_model("outputs/demo-export", adapter="outputs/demo-lora", fmt="both",
                 gguf_type="f16,q4_k_m")

writes, under the output folder:

- `merged/` (`--format merged|both`): the adapter merged into its base reloaded in 32 bits
  (`merge.merge_adapter`), loadable by plain `from_pretrained`.
- `NAME-TYPE.gguf` (`--format gguf|both`): one file per type llama.cpp, LM Studio and Ollama
  run (`gguf.writer`; several types, comma-separated, come from one merge), and `Modelfile`, an
  Ollama recipe that points at the last type listed (`modelfile`).
- `NAME-TYPE-lora.gguf` (`--format lora-gguf`): the adapter alone, unmerged, as a GGUF LoRA file
  (f32 or f16, `gguf.lora`) that llama.cpp applies on top of any GGUF of the base model
  (`--lora FILE`).

Every check that can fail runs before anything large is written: the adapter folder, the base
model, whether the GGUF writer supports the architecture, tokenizer and types (a k-quant needs
llama-cpp-python), and whether an output already exists (replaced only with `force`). Without
`--format merged` the merge goes to a temporary folder inside the output folder, removed
afterwards.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from shared_utils.arg_types import comma_list
from shared_utils.errors import ConfigurationError
from training_methods.transfer_learning.model_source import (
    ModelSource,
    resolve_source,
    tokenizer_source,
)
from training_methods.transfer_learning.serving.gguf.file import GGUFSummary
from training_methods.transfer_learning.serving.gguf.tensors import GGUF_TYPES, GGUFType
from training_methods.transfer_learning.serving.modelfile import write_modelfile

logger = logging.getLogger(__name__)

ExportFormat = Literal["merged", "gguf", "both", "lora-gguf"]
EXPORT_FORMATS: tuple[ExportFormat, ...] = ("merged", "gguf", "both", "lora-gguf")
MERGED_DIR = "merged"
DEFAULT_FORMAT: ExportFormat = "gguf"
DEFAULT_GGUF_TYPE = "f16"


@dataclass
class ExportResult:
    """What `export_model` wrote."""

    output_dir: Path
    merged_dir: Path | None = None
    ggufs: list[GGUFSummary] = field(default_factory=list)  # in the order the types were given
    modelfile: Path | None = None


def gguf_file_name(name: str, gguf_type: GGUFType) -> str:
    return f"{name}-{gguf_type}.gguf"


def lora_gguf_file_name(name: str, gguf_type: GGUFType) -> str:
    return f"{name}-{gguf_type}-lora.gguf"


def parse_gguf_types(gguf_type: str | Sequence[str]) -> list[GGUFType]:
    """ "f16,q4_k_m" (or a list) → the types in order, once each; ConfigurationError for an
    unknown one."""
    text = gguf_type if isinstance(gguf_type, str) else ",".join(gguf_type)
    try:
        return comma_list(text, GGUF_TYPES)  # type: ignore[return-value]
    except argparse.ArgumentTypeError as exc:
        raise ConfigurationError(f"--gguf-type {exc}") from None


def export_model(
    output_dir: str | Path,
    *,
    adapter: str | Path | None = None,
    model: str | None = None,
    fmt: ExportFormat = DEFAULT_FORMAT,
    gguf_type: str | Sequence[str] = DEFAULT_GGUF_TYPE,
    force: bool = False,
    progress: bool = True,
) -> ExportResult:
    """Merge and/or convert (see the module docstring); returns what was written where."""
    if fmt not in EXPORT_FORMATS:
        raise ConfigurationError(f"--format {fmt}: use one of {', '.join(EXPORT_FORMATS)}")
    gguf_types = parse_gguf_types(gguf_type)
    output_dir = Path(output_dir)
    source = resolve_source(model, adapter)
    if fmt == "lora-gguf":
        return export_lora_gguf(output_dir, source, gguf_types, force=force, progress=progress)
    want_merged = fmt in ("merged", "both")
    want_gguf = fmt in ("gguf", "both")
    if want_merged and source.adapter is None:
        raise ConfigurationError(
            f"--format {fmt} needs --adapter: --model {source.model} is already a merged model "
            "(use --format gguf)"
        )
    if want_gguf:
        from training_methods.transfer_learning.serving.gguf.writer import check_gguf_types

        check_gguf_types(gguf_types)  # a k-quant without llama-cpp-python stops here
        check_gguf_source(source)
    merged_dir = output_dir / MERGED_DIR
    gguf_paths = {kind: output_dir / gguf_file_name(source.name, kind) for kind in gguf_types}
    refuse_existing(
        [
            *([merged_dir] if want_merged else []),
            # The Modelfile is a small pointer to the newest GGUF, rewritten by every export.
            *(gguf_paths.values() if want_gguf else []),
        ],
        force,
    )

    result = ExportResult(output_dir=output_dir)
    created = not output_dir.exists()
    output_dir.mkdir(parents=True, exist_ok=True)
    scratch: Path | None = None
    try:
        if source.adapter is not None:
            from training_methods.transfer_learning.merge import merge_adapter

            if not want_merged:
                scratch = Path(tempfile.mkdtemp(prefix=".merge-", dir=output_dir))
            target = merged_dir if want_merged else scratch / MERGED_DIR
            model_dir = merge_adapter(source.adapter, target, base_model=source.model, force=True)
            if want_merged:
                result.merged_dir = model_dir
        else:
            model_dir = local_model_dir(source.model)
        if want_gguf:
            from training_methods.transfer_learning.serving.gguf.writer import write_ggufs

            result.ggufs = write_ggufs(
                model_dir,
                gguf_paths,
                name=source.name,
                progress=progress,
                tokenizer_dirs=tokenizer_dirs(source),
            )
            result.modelfile = write_modelfile(model_dir, result.ggufs[-1].path)
    except BaseException:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
            scratch = None
        if created and output_dir.is_dir() and not any(output_dir.iterdir()):
            output_dir.rmdir()  # a refused export leaves no empty folder behind
        raise
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    return result


def export_lora_gguf(
    output_dir: Path,
    source: ModelSource,
    gguf_types: Sequence[GGUFType],
    *,
    force: bool,
    progress: bool,
) -> ExportResult:
    """`--format lora-gguf`: one LoRA file per type, no merge. Everything is checked (adapter,
    base config, types, existing files) before the first file is written."""
    from training_methods.transfer_learning.merge import read_adapter_config
    from training_methods.transfer_learning.model_loading import load_model_config
    from training_methods.transfer_learning.serving.gguf.architectures import check_model_config
    from training_methods.transfer_learning.serving.gguf.lora import (
        LORA_GGUF_TYPES,
        lora_alpha_for_llama_cpp,
        write_lora_gguf,
    )

    if source.adapter is None:
        raise ConfigurationError(
            "--format lora-gguf needs --adapter DIR (a train-lora/train-qlora output): it writes "
            "the adapter alone, for the base model's GGUF"
        )
    for kind in gguf_types:
        if kind not in LORA_GGUF_TYPES:
            raise ConfigurationError(
                f"--gguf-type {kind}: a LoRA file is written as {' or '.join(LORA_GGUF_TYPES)} "
                "(it is small; quantise the base model's GGUF instead)"
            )
    base_config = load_model_config(source.model)
    check_model_config(base_config, source.model)
    lora_alpha_for_llama_cpp(read_adapter_config(source.adapter), str(source.adapter))
    paths = {kind: output_dir / lora_gguf_file_name(source.name, kind) for kind in gguf_types}
    refuse_existing(list(paths.values()), force)
    result = ExportResult(output_dir=output_dir)
    for kind, path in paths.items():
        result.ggufs.append(
            write_lora_gguf(
                source.adapter, base_config, path, kind, name=source.name, progress=progress
            )
        )
    return result


def local_model_dir(model: str) -> Path:
    """A local folder, or the cached download of a hub id (no network: the GGUF writer reads the
    safetensors files themselves)."""
    from training_methods.transfer_learning.model_loading import is_gguf, resolve_model_path

    if is_gguf(model):
        return Path(resolve_model_path(model))
    if Path(model).is_dir():
        return Path(model)
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(model, local_files_only=True))
    except (OSError, ValueError) as exc:  # not cached, or not a valid repo id
        raise ConfigurationError(
            f"--model {model}: not a local folder nor a cached hub model "
            f"({type(exc).__name__}) — download it first (huggingface-cli download {model}) or "
            "pass a folder"
        ) from None


def check_gguf_source(source: ModelSource) -> None:
    """Refuse, from configs alone, a model the GGUF writer cannot convert: runs before the merge
    and before any large file is written."""
    from training_methods.transfer_learning.model_loading import load_model_config, load_tokenizer
    from training_methods.transfer_learning.serving.gguf.architectures import check_model_config
    from training_methods.transfer_learning.serving.gguf.writer import check_exportable

    config = load_model_config(source.model)
    check_model_config(config, source.model)  # the architecture first: it needs no tokenizer
    tokenizer = load_tokenizer(tokenizer_source(source))
    check_exportable(config, tokenizer, source.model, tokenizer_dirs(source))


def tokenizer_dirs(source: ModelSource) -> list[Path]:
    """Where a SentencePiece tokenizer.model may be, in order: the adapter folder, the model (the
    base) folder. transformers 5 does not copy it when it saves a tokenizer, so a fine-tune's own
    folders usually lack it and the base model's is the one."""
    folders = [source.adapter] if source.adapter is not None else []
    try:
        folders.append(local_model_dir(source.model))
    except ConfigurationError:
        pass  # a hub id that is not cached: the check names the folders it searched
    return folders


def refuse_existing(paths: list[Path], force: bool) -> None:
    if force:
        return
    for path in paths:
        if path.is_file() or (path.is_dir() and any(path.iterdir())):
            raise ConfigurationError(
                f"{path} already exists — pass --force to replace it, or choose another --output"
            )
