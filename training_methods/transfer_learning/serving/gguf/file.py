"""A GGUF file on disk: the tensor index declared from the plans, the tensors streamed after the
metadata, and the checks and renames that keep a failed write from leaving a file behind.

The file is streamed: the header and tensor index are written from the shapes alone, then one
tensor at a time is read, converted and appended, so memory holds one tensor, not the model. It is
written under a temporary name and renamed into place only when complete, so an interrupted or
disk-full write never leaves a truncated `.gguf` under the final name.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from shared_utils.errors import LLMToolkitError
from training_methods.transfer_learning.serving.gguf.tensors import (
    CheckpointTensors,
    TensorPlan,
    convert_tensor,
)

if TYPE_CHECKING:
    from gguf import GGUFWriter
    from transformers import PretrainedConfig


@dataclass
class GGUFSummary:
    """What `write_gguf` wrote; the export command prints it, the benchmark tabulates it."""

    path: Path
    gguf_type: str
    architecture: str
    tokenizer_pre: str
    tensor_count: int
    size_bytes: int
    seconds: float
    tensor_types: dict[str, int] = field(default_factory=dict)  # ggml type → number of tensors
    kind: Literal["model", "lora"] = "model"  # a whole model, or a LoRA adapter for one


def declare_tensors(writer: GGUFWriter, plans: Sequence[TensorPlan]) -> None:
    """The index entry of every tensor, in write order; the data follows in `stream_tensors`."""
    import numpy as np
    from gguf import GGMLQuantizationType as Q

    for plan in plans:
        if plan.qtype not in (Q.F32, Q.F16):  # quantized tensors are declared by their byte shape
            byte_shape = (*plan.shape[:-1], plan.nbytes // math.prod(plan.shape[:-1]))
            writer.add_tensor_info(plan.name, byte_shape, np.uint8, plan.nbytes, plan.qtype)
        else:
            dtype = np.float32 if plan.qtype == Q.F32 else np.float16
            writer.add_tensor_info(plan.name, plan.shape, dtype, plan.nbytes, plan.qtype)


def stream_tensors(
    writer: GGUFWriter,
    path: Path,
    plans: Sequence[TensorPlan],
    checkpoint: CheckpointTensors,
    config: PretrainedConfig,
    progress: bool,
) -> None:
    from tqdm import tqdm

    writer.write_header_to_file(path)
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    bar = tqdm(
        total=sum(plan.nbytes for plan in plans),
        unit="B",
        unit_scale=True,
        desc=f"writing {path.name.lstrip('.').split('.gguf')[0]}.gguf",
        disable=not progress,
        leave=False,
    )
    with bar:
        for plan in plans:
            data = convert_tensor(plan, checkpoint, config)
            writer.write_tensor_data(data)
            bar.update(plan.nbytes)
    writer.flush()
    assert writer.fout is not None
    for handle in writer.fout:
        os.fsync(handle.fileno())


def check_free_space(output_path: Path, data_bytes: int) -> None:
    folder = output_path.parent
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    needed = data_bytes + (16 << 20)  # the metadata (vocabulary, merges) is a few MB at most
    if free < needed:
        raise LLMToolkitError(
            f"{folder}: {free / 1e6:.0f} MB free, the GGUF file needs about {needed / 1e6:.0f} MB "
            "— free some space or choose another --output"
        )


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path next to `path`, renamed over it when the block succeeds and removed when
    it fails (a rename within one file system is atomic)."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give what a plain open() gives
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
