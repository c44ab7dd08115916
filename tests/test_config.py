"""Config: defaults < YAML < flags, strict keys and types, safe YAML, the shipped file."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared_utils.config import (
    DEFAULT_CONFIG_PATH,
    ToolkitConfig,
    apply_overrides,
    config_from_dict,
    load_config,
    render_default_yaml,
)
from shared_utils.errors import ConfigurationError
from tests.script_helpers import load_script

REPO = Path(__file__).resolve().parent.parent


def test_shipped_default_yaml_is_generated_from_the_dataclasses() -> None:
    assert DEFAULT_CONFIG_PATH.read_text(encoding="utf-8") == render_default_yaml()
    assert load_config() == ToolkitConfig()


def test_write_default_config_checks_and_writes_only_without_flags(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    script = load_script("write_default_config")
    stale = tmp_path / "default.yaml"
    stale.write_text("common: {}\n", encoding="utf-8")
    monkeypatch.setattr(script, "DEFAULT_CONFIG_PATH", stale)
    with pytest.raises(SystemExit) as exited:
        script.main(["--help"])
    assert exited.value.code == 0 and "--check" in capsys.readouterr().out
    assert script.main(["--check"]) == 1
    assert "python scripts/write_default_config.py" in capsys.readouterr().err
    assert stale.read_text(encoding="utf-8") == "common: {}\n"  # --help and --check write nothing
    assert script.main([]) == 0
    assert stale.read_text(encoding="utf-8") == render_default_yaml()
    assert script.main(["--check"]) == 0


def test_shipped_config_has_every_section_of_the_specification() -> None:
    text = DEFAULT_CONFIG_PATH.read_text(encoding="utf-8")
    for section in (
        "common:",
        "document_processing:",
        "transfer_learning:",
        "  lora:",
        "  qlora:",
        "    training:",
        "    quantization:",
        "reinforcement_learning:",
        "  ppo:",
        "  dqn:",
        "    early_stopping:",
        "logging:",
    ):
        assert f"\n{section}\n" in text, section


def test_yaml_overrides_defaults_and_scientific_notation_is_a_float(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        "transfer_learning:\n  lora:\n    training:\n      learning_rate: 2e-4\n"
        "document_processing:\n  chunk_size: 256\n"
    )
    config = load_config(path)
    assert config.transfer_learning.lora.training.learning_rate == pytest.approx(2e-4)
    assert isinstance(config.transfer_learning.lora.training.learning_rate, float)
    assert config.document_processing.chunk_size == 256
    assert config.document_processing.overlap_size == 50  # untouched default


def test_flags_override_yaml(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("document_processing:\n  chunk_size: 256\n")
    config = load_config(path)
    apply_overrides(config, {"document_processing.chunk_size": 128, "common.seed": None})
    assert config.document_processing.chunk_size == 128
    assert config.common.seed == 42  # None means the flag was not given


def test_unknown_key_names_the_dotted_key_and_suggests(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("document_processing:\n  chunk_sise: 256\n")
    with pytest.raises(ConfigurationError) as info:
        load_config(path)
    message = str(info.value)
    assert "document_processing.chunk_sise" in message
    assert "Did you mean 'chunk_size'" in message
    assert "overlap_size" in message  # lists the valid keys
    assert str(path) in message


def test_wrong_type_names_key_and_type() -> None:
    with pytest.raises(ConfigurationError, match=r"'common\.seed' must be int, got 'many'"):
        config_from_dict({"common": {"seed": "many"}})
    with pytest.raises(ConfigurationError, match=r"'common\.device' is 'gpu'"):
        config_from_dict({"common": {"device": "gpu"}})
    with pytest.raises(ConfigurationError, match="section 'logging' must be a mapping"):
        config_from_dict({"logging": 3})


def test_python_tags_are_refused_not_executed(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "c.yaml"
    path.write_text(f"common: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ConfigurationError, match=r"c\.yaml:1: refused YAML tag") as info:
        load_config(path)
    assert info.value.exit_code == 2  # a config error, as the README documents
    assert not marker.exists()


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="not found"):
        load_config(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("common:\n  seed: [1, 2\n")
    with pytest.raises(ConfigurationError, match=r"bad\.yaml:\d+: invalid YAML"):
        load_config(bad)


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("")
    assert load_config(path) == ToolkitConfig()


def test_target_modules_accepts_auto_or_a_list() -> None:
    config = config_from_dict({"transfer_learning": {"lora": {"target_modules": ["q_proj"]}}})
    assert config.transfer_learning.lora.target_modules == ["q_proj"]
    assert ToolkitConfig().transfer_learning.lora.target_modules == "auto"


@pytest.mark.parametrize(
    "name", sorted(str(p.relative_to(REPO / "configs")) for p in (REPO / "configs").rglob("*.yaml"))
)
def test_every_shipped_config_loads(name: str) -> None:
    config = load_config(REPO / "configs" / name)
    assert config.transfer_learning.lora.training.learning_rate > 0


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        (
            "evaluation:\n  eval_episodes: 5\n",
            "config key 'evaluation.eval_episodes' moved to "
            "'reinforcement_learning.training.eval_episodes'.",
        ),
        (
            "evaluation:\n  eval_frequency: 5\n",
            "config key 'evaluation.eval_frequency' moved to "
            "'transfer_learning.lora.training.eval_steps' (train-lora) and "
            "'transfer_learning.qlora.training.eval_steps' (train-qlora).",
        ),
        (
            "checkpoint: {max_checkpoints: 2}\n",
            "config key 'checkpoint.max_checkpoints' moved to "
            "'transfer_learning.lora.training.max_checkpoints' (train-lora) and "
            "'transfer_learning.qlora.training.max_checkpoints' (train-qlora) and "
            "'reinforcement_learning.training.max_checkpoints' (train-rl).",
        ),
        (
            "early_stopping:\n  patience: 2\n",
            "config key 'early_stopping.patience' moved to "
            "'transfer_learning.lora.early_stopping.patience' (train-lora) and "
            "'transfer_learning.qlora.early_stopping.patience' (train-qlora).",
        ),
        ("common:\n  output_dir: runs\n", "'reinforcement_learning.training.output_dir'"),
        (
            "document_processing:\n  pdf:\n    fallback_to_pypdf2: false\n",
            "config key 'document_processing.pdf.fallback_to_pypdf2' moved to "
            "'document_processing.pdf.fallback_to_pypdf'",
        ),
        (
            "document_processing:\n  pdf:\n    use_pdfplumber_first: true\n",
            "config key 'document_processing.pdf.use_pdfplumber_first' was removed: it only "
            "restated the engine — set 'document_processing.pdf.engine'",
        ),
        ("checkpoint: {}\n", "config section 'checkpoint' was split by command: "),
    ],
)
def test_a_moved_key_says_where_it_went_in_one_line(
    tmp_path: Path, yaml_text: str, message: str
) -> None:
    path = tmp_path / "old.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigurationError) as info:
        load_config(path)
    text = str(info.value)
    assert text.startswith(f"{path}: ") and message in text and "\n" not in text
    assert "unknown config key" not in text


def test_a_moved_key_through_the_command_line_says_where_it_went(run_main, tmp_path: Path) -> None:
    path = tmp_path / "old.yaml"
    path.write_text("early_stopping:\n  enabled: false\n")
    status, _, err = run_main(
        "--config", path, "create-samples", tmp_path / "samples", "--no-model"
    )
    assert status == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"error: {path}: config key 'early_stopping.enabled' moved to ")
    with pytest.raises(ConfigurationError, match="moved to 'reinforcement_learning.training"):
        apply_overrides(ToolkitConfig(), {"evaluation.eval_episodes": 3})
