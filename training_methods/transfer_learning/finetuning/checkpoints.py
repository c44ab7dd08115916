"""The run folder of a fine-tuning run: its `checkpoint-N` folders, the best adapter early stopping
keeps, and which checkpoint `--resume` continues from.

The Hugging Face Trainer writes the checkpoints (adapter, optimizer, scheduler, then
`trainer_state.json`); this module decides which of them is complete, and saves the adapter files
the toolkit writes itself so that a crash never leaves one half-written.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared_utils.errors import ConfigurationError
from shared_utils.file_utils import current_umask

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "checkpoint"
BEST_ADAPTER_DIR = "best_adapter"
EARLY_STOPPING_STATE = "early_stopping.json"


def save_files_atomically(folder: Path, *savers: Callable[[str], Any]) -> None:
    """Run `save_pretrained`-style savers into a temporary folder, then move each file into
    `folder` with an atomic rename: a crash never leaves a half-written adapter file."""
    folder.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".saving-", dir=folder))
    try:
        for save in savers:
            save(str(staging))
        for path in staging.iterdir():
            if path.is_file():
                path.chmod(0o666 & ~current_umask())
                os.replace(path, folder / path.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def checkpoint_folders(output_dir: Path) -> list[Path]:
    """The `checkpoint-N` folders of a run, newest (highest N) first."""
    if not output_dir.is_dir():
        return []
    folders = [
        path
        for path in output_dir.iterdir()
        if re.fullmatch(rf"{CHECKPOINT_PREFIX}-\d+", path.name) and path.is_dir()
    ]
    return sorted(folders, key=checkpoint_step, reverse=True)


def is_complete_checkpoint(folder: Path) -> bool:
    """The Trainer writes `trainer_state.json` after the weights, optimizer and scheduler, so a
    checkpoint without a readable one was cut short while it was being saved."""
    try:
        state = json.loads((folder / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (
        isinstance(state, dict)
        and "global_step" in state
        and (folder / "adapter_model.safetensors").is_file()
    )


def last_checkpoint(output_dir: Path) -> Path | None:
    """The newest complete checkpoint of a run, or None."""
    return next((f for f in checkpoint_folders(output_dir) if is_complete_checkpoint(f)), None)


def checkpoint_step(checkpoint: Path) -> int:
    return int(checkpoint.name.rsplit("-", 1)[-1])


def checkpoint_to_resume(output_dir: Path, resume: bool) -> Path | None:
    """The checkpoint `--resume` continues from (None without `--resume`); a ConfigurationError
    for a folder holding an earlier run without `--resume`, or nothing to resume with it."""
    folders = checkpoint_folders(output_dir)
    if not resume:
        if folders:
            raise ConfigurationError(
                f"{output_dir} holds checkpoints of an earlier run ({folders[0].name}) — pass "
                "--resume to continue it, or choose another --output-dir"
            )
        return None
    if not folders:
        raise ConfigurationError(
            f"--resume: no {CHECKPOINT_PREFIX}-* folder in {output_dir} — run without "
            "--resume to start training, or point --output-dir at the earlier run"
        )
    last = last_checkpoint(output_dir)
    if last is None:
        raise ConfigurationError(
            f"--resume: no complete checkpoint in {output_dir} ({folders[0].name} has no "
            "readable trainer_state.json: the run was killed while saving it) — delete the "
            "run folder and start again"
        )
    if last != folders[0]:
        # A later save overwrites the incomplete folder; until then it is left as it is.
        logger.warning(
            "%s is incomplete (the run was killed while saving it): resuming from %s",
            folders[0],
            last.name,
        )
    return last


def early_stopping_state(checkpoint: Path | None) -> dict[str, Any] | None:
    """The early-stopping state saved with `checkpoint`, if it has one."""
    if checkpoint is None:
        return None
    state_file = checkpoint / EARLY_STOPPING_STATE
    if not state_file.is_file():
        return None
    return json.loads(state_file.read_text())


def restore_adapter(model: torch.nn.Module, adapter_dir: Path) -> bool:
    """Load the adapter weights saved in `adapter_dir` into the peft `model`; False when there
    are none."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    weights = adapter_dir / "adapter_model.safetensors"
    if not weights.is_file():
        return False
    set_peft_model_state_dict(model, load_file(str(weights)))
    return True
