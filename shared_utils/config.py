"""Typed configuration: dataclass defaults < YAML file < command-line flags.

Every section of `configs/default.yaml` is one dataclass, and the defaults live only in these
dataclasses: `config_sections` (common, document_processing, logging, qa_generation),
`config_transfer_learning` and `config_reinforcement_learning` declare them, and this module
joins them into `ToolkitConfig`. `load_config` reads YAML with safe loading, coerces scalars to
the declared field types (PyYAML reads `2e-4` as a string), and rejects unknown keys and wrong
types with a `ConfigurationError` that names the dotted key, the valid keys and a did-you-mean;
a key that moved gets a one-line "moved to" error instead. Every section class is importable
from here.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from shared_utils.config_reinforcement_learning import (
    DQNConfig,
    PPOConfig,
    ReinforcementLearningConfig,
    RLTrainingConfig,
)
from shared_utils.config_sections import (
    RECORD_KIND_NAMES,
    CommonConfig,
    DocumentProcessingConfig,
    LoggingConfig,
    PdfConfig,
    QaGenerationConfig,
    check_training_sections,
)
from shared_utils.config_transfer_learning import (
    MAX_TRAINING_STEPS,
    EarlyStoppingConfig,
    LoraConfig,
    QLoraConfig,
    QuantizationConfig,
    TrainingConfig,
    TransferLearningConfig,
)
from shared_utils.errors import ConfigurationError
from shared_utils.security import first_yaml_alias

__all__ = [
    "CommonConfig",
    "DEFAULT_CONFIG_PATH",
    "DQNConfig",
    "DocumentProcessingConfig",
    "EarlyStoppingConfig",
    "LoggingConfig",
    "LoraConfig",
    "MAX_TRAINING_STEPS",
    "MOVED_KEYS",
    "MOVED_SECTIONS",
    "PPOConfig",
    "PdfConfig",
    "QLoraConfig",
    "QaGenerationConfig",
    "QuantizationConfig",
    "RECORD_KIND_NAMES",
    "REPO_ROOT",
    "RLTrainingConfig",
    "ReinforcementLearningConfig",
    "ToolkitConfig",
    "TrainingConfig",
    "TransferLearningConfig",
    "apply_overrides",
    "check_training_sections",
    "config_from_dict",
    "config_to_dict",
    "dump_config",
    "load_config",
    "read_yaml",
    "render_default_yaml",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG_PATH = REPO_ROOT / "configs" / "default.yaml"


@dataclass
class ToolkitConfig:
    common: CommonConfig = field(default_factory=CommonConfig)
    document_processing: DocumentProcessingConfig = field(default_factory=DocumentProcessingConfig)
    transfer_learning: TransferLearningConfig = field(default_factory=TransferLearningConfig)
    reinforcement_learning: ReinforcementLearningConfig = field(
        default_factory=ReinforcementLearningConfig
    )
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    qa_generation: QaGenerationConfig = field(default_factory=QaGenerationConfig)


# --------------------------------------------------------------------------------------------------
# Keys that moved: each command's keys are in its own section now
# --------------------------------------------------------------------------------------------------


def _fine_tuning(path: str) -> str:
    return (
        f"'transfer_learning.lora.{path}' (train-lora) and 'transfer_learning.qlora.{path}' "
        "(train-qlora)"
    )


# An old key in a user's YAML (or a dotted override) gets "moved to" instead of "unknown key".
MOVED_KEYS: dict[str, str] = {
    "common.output_dir": (
        "moved to 'reinforcement_learning.training.output_dir' (train-rl was its only reader); "
        "runs now go to <output_dir>/<algorithm>-<env>-seed<seed>, so append /rl to your value "
        "to keep the same folders"
    ),
    "evaluation.eval_frequency": f"moved to {_fine_tuning('training.eval_steps')}",
    "evaluation.num_samples": f"moved to {_fine_tuning('num_samples')}",
    "evaluation.eval_episodes": "moved to 'reinforcement_learning.training.eval_episodes'",
    "checkpoint.save_steps": f"moved to {_fine_tuning('training.save_steps')}",
    "checkpoint.max_checkpoints": (
        f"moved to {_fine_tuning('training.max_checkpoints')} and "
        "'reinforcement_learning.training.max_checkpoints' (train-rl)"
    ),
    **{
        f"early_stopping.{f.name}": f"moved to {_fine_tuning(f'early_stopping.{f.name}')}"
        for f in dataclasses.fields(EarlyStoppingConfig)
    },
    "document_processing.pdf.use_pdfplumber_first": (
        "was removed: it only restated the engine — set 'document_processing.pdf.engine' "
        "(pdfplumber, pypdf or pypdfium2)"
    ),
    "document_processing.pdf.fallback_to_pypdf2": (
        "moved to 'document_processing.pdf.fallback_to_pypdf' (the fallback engine is pypdf)"
    ),
}
MOVED_SECTIONS = ("evaluation", "checkpoint", "early_stopping")


def _moved_error(key: str, value: Any) -> ConfigurationError | None:
    """The "moved to" error of an old key or section, or None when `key` never existed."""
    if key in MOVED_KEYS:
        return ConfigurationError(f"config key '{key}' {MOVED_KEYS[key]}.")
    if key not in MOVED_SECTIONS:
        return None
    for name in value if isinstance(value, dict) else ():
        if f"{key}.{name}" in MOVED_KEYS:
            return _moved_error(f"{key}.{name}", None)
    where = "; ".join(f"{old} {new}" for old, new in MOVED_KEYS.items() if old.startswith(key))
    return ConfigurationError(f"config section '{key}' was split by command: {where}.")


# --------------------------------------------------------------------------------------------------
# Loading, coercion and overrides
# --------------------------------------------------------------------------------------------------


def _did_you_mean(name: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(name, valid, n=1)
    return f" Did you mean '{close[0]}'?" if close else ""


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return " | ".join(repr(v) for v in typing.get_args(tp))
    if typing.get_origin(tp) in (Union, types.UnionType):
        return " | ".join(_type_name(arg) for arg in typing.get_args(tp))
    if typing.get_origin(tp) is list:
        return f"list[{_type_name(typing.get_args(tp)[0])}]"
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


def _shown(value: Any, limit: int = 80) -> str:
    """`repr(value)` cut to `limit` characters: an error message never prints a huge value."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Return `value` as type `tp`, or raise ConfigurationError naming `key`."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _coerce(value, arg, key)
            except ConfigurationError:
                continue
    elif origin is Literal:
        choices = typing.get_args(tp)
        if value in choices:
            return value
        hint = _did_you_mean(str(value), [str(c) for c in choices])
        raise ConfigurationError(
            f"config key '{key}' is {_shown(value)}; choose one of "
            f"{', '.join(map(repr, choices))}.{hint}"
        )
    elif origin is list:
        if isinstance(value, list):
            (item_tp,) = typing.get_args(tp)
            return [_coerce(item, item_tp, f"{key}[{i}]") for i, item in enumerate(value)]
    elif tp is type(None):
        if value is None:
            return None
    elif tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        number = _finite_float(value, key)
        if number is not None and number.is_integer():
            if abs(number) > _EXACT_FLOAT_INTEGERS:
                raise ConfigurationError(
                    f"config key '{key}' is {_shown(value)}, too large to be an exact integer; "
                    "write the whole number out, or a sensible one."
                )
            return int(number)
    elif tp is float:
        number = _finite_float(value, key)
        if number is not None:
            return number
    elif tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    raise ConfigurationError(
        f"config key '{key}' must be {_type_name(tp)}, got {_shown(value)} "
        f"({type(value).__name__})."
    )


# Integers above 2**53 written as floats (1e23) are not what they look like: 1e23 is
# 99999999999999991611392. No setting needs that many of anything.
_EXACT_FLOAT_INTEGERS = 2**53


def _finite_float(value: Any, key: str) -> float | None:
    """`value` as a float when it is a number or numeric text (`2e-4`, `1_000`), else None.

    Infinity and NaN are refused: no setting means "forever" by them, and they turn into
    overflows or endless loops further on.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        number = float(value.replace("_", "")) if isinstance(value, str) else float(value)
    except (ValueError, OverflowError):
        return None
    if not math.isfinite(number):
        raise ConfigurationError(
            f"config key '{key}' is {_shown(value)}; it must be a finite number."
        )
    return number


def _build(cls: type, data: Any, prefix: str) -> Any:
    """Build dataclass `cls` from a mapping, rejecting unknown keys."""
    where = prefix or "the top level"
    if not isinstance(data, dict):
        raise ConfigurationError(f"config section '{where}' must be a mapping, got {_shown(data)}.")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else str(name)
        if name not in fields:
            moved = _moved_error(key, value)
            if moved is not None:
                raise moved
            valid = sorted(fields)
            raise ConfigurationError(
                f"unknown config key '{key}'.{_did_you_mean(str(name), valid)} "
                f"Valid keys in {where}: {', '.join(valid)}."
            )
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value if value is not None else {}, key)
        else:
            kwargs[name] = _coerce(value, tp, key)
    return cls(**kwargs)


class _SafeLoader(yaml.SafeLoader):
    """Safe loader that also reads floats without a dot (`2e-4`); YAML 1.1 leaves them strings."""


_SafeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?(?:[eE][-+]?[0-9]+)?
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def read_yaml(path: Path) -> Any:
    """Read a YAML file with safe loading; errors name the file and line."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigurationError(
            f"config file '{path}' not found; pass an existing file with --config."
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"config file '{path}' cannot be read: {exc}.") from None
    # Config errors exit 2, also the refusals below (an alias or a python tag is never run).
    try:
        alias = first_yaml_alias(text)
        if alias is not None:
            raise ConfigurationError(
                f"{path}:{alias.start_mark.line + 1}: refused YAML alias (*{alias.anchor}); "
                "aliases can expand to gigabytes, so write the value out instead."
            )
        return yaml.load(text, Loader=_SafeLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.constructor.ConstructorError as exc:
        mark = exc.problem_mark
        line = f":{mark.line + 1}" if mark else ""
        raise ConfigurationError(
            f"{path}{line}: refused YAML tag ({exc.problem}); only plain YAML is allowed."
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigurationError(f"{path}{line}: invalid YAML ({problem}).") from None


def config_from_dict(data: dict[str, Any]) -> ToolkitConfig:
    """Build a `ToolkitConfig` from a (possibly partial) nested mapping."""
    return _build(ToolkitConfig, data or {}, "")


def load_config(path: str | Path | None = None) -> ToolkitConfig:
    """Load a config file over the dataclass defaults.

    `path` is relative to the current directory; `None` loads the shipped `configs/default.yaml`,
    found relative to the repository wherever the user stands.
    """
    config_path = Path(path) if path is not None else DEFAULT_CONFIG_PATH
    data = read_yaml(config_path)
    if data is None:
        data = {}
    try:
        return config_from_dict(data)
    except ConfigurationError as exc:
        raise ConfigurationError(f"{config_path}: {exc}") from None


def apply_overrides(config: Any, overrides: dict[str, Any]) -> None:
    """Set dotted keys (`document_processing.chunk_size`) from command-line flags, in place.

    `None` values are flags the user did not give and leave the config as it is.
    """
    for dotted, value in overrides.items():
        if value is None:
            continue
        if isinstance(config, ToolkitConfig) and dotted in MOVED_KEYS:
            raise ConfigurationError(f"config key '{dotted}' {MOVED_KEYS[dotted]}.")
        *parents, leaf = dotted.split(".")
        target = config
        for part in parents:
            target = getattr(target, part)
        hints = typing.get_type_hints(type(target))
        if leaf not in hints:
            raise ConfigurationError(f"unknown config key '{dotted}'.")
        setattr(target, leaf, _coerce(value, hints[leaf], dotted))


def render_default_yaml() -> str:
    """`configs/default.yaml` as generated from the dataclasses: every key, its default, its help.

    The shipped file is this text (a test checks it), so the defaults live only in the dataclasses.
    """
    lines = [
        "# LLM Complete Toolkit configuration: every key, with its default.",
        "# Generated from shared_utils/config.py by `python scripts/write_default_config.py`.",
        "# Copy this file, change what you need and pass it with --config; command-line flags",
        "# override the file, and the file overrides these defaults.",
    ]
    _render_section(ToolkitConfig(), 0, lines)
    return "\n".join(lines) + "\n"


def _render_section(section: Any, depth: int, lines: list[str]) -> None:
    indent = "  " * depth
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        if dataclasses.is_dataclass(value):
            if depth == 0:
                lines.append("")
            lines.append(f"{indent}{f.name}:")
            _render_section(value, depth + 1, lines)
            continue
        rendered = yaml.safe_dump(value, default_flow_style=True, width=1000).strip()
        rendered = rendered.removesuffix("\n...").removesuffix("...").strip()
        help_text = f.metadata.get("help", "")
        lines.append(f"{indent}{f.name}: {rendered}" + (f"  # {help_text}" if help_text else ""))


def config_to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def dump_config(config: Any) -> str:
    """The resolved config as YAML, in declaration order."""
    return yaml.safe_dump(config_to_dict(config), sort_keys=False, allow_unicode=True)
