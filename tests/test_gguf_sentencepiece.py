"""Llama 2 and Mistral 7B style models through the GGUF export, end to end: a SentencePiece BPE
tokenizer (byte fallback, "▁" for spaces, a dummy prefix, trained here with the sentencepiece
package and loaded by transformers from its tokenizer.model, as a hub folder of these families
is), a tiny random `LlamaForCausalLM` / `MistralForCausalLM`, fine-tuned with train-lora's LoRA
on CHATS, exported from the adapter, and run by llama.cpp (llama-cpp-python) against
transformers.

The tiny models and their tokenizers are built by tests/gguf_models.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.finetune_helpers import FineTuned, finetune_on_chats
from tests.gguf_models import (
    SPM_SAMPLES,
    TOKENIZER_SAMPLES,
    build_tiny_sentencepiece_model,
    train_sentencepiece,
)
from tests.gguf_roundtrip import (
    check_chat_answers,
    check_greedy_tokens_and_logits,
    exported_once,
    gguf_fields,
    open_llama,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread", "llama_cpp_without_amx_repacking")

# transformers' Metaspace pre-tokenizer adds no "▁" before text that already opens with a space,
# where sentencepiece and llama.cpp do: these split differently (the export warns).
LEADING_SPACE_SAMPLES = [text for text in TOKENIZER_SAMPLES if text.startswith(" ")]


ARCHITECTURES = ["llama", "mistral"]


@pytest.fixture(scope="module", params=ARCHITECTURES)
def exported(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, FineTuned, dict[str, Path]]:
    """(architecture, the fine-tune, type → GGUF file exported from its adapter in one call)."""
    arch = request.param

    def finetune() -> FineTuned:
        base = build_tiny_sentencepiece_model(tmp_path_factory.mktemp(f"tiny-spm-{arch}"), arch)
        finetuned = finetune_on_chats(tmp_path_factory, base)
        assert not (finetuned.adapter / "tokenizer.model").exists()  # found in the base folder
        return finetuned

    return arch, *exported_once(tmp_path_factory, arch, finetune)


def test_metadata_carries_the_sentencepiece_vocabulary(
    exported: tuple[str, FineTuned, dict],
) -> None:
    import sentencepiece as spm
    from gguf import TokenType
    from transformers import AutoConfig

    arch, finetuned, files = exported
    config = AutoConfig.from_pretrained(finetuned.merged)
    processor = spm.SentencePieceProcessor(
        model_file=str(config_base(finetuned) / "tokenizer.model")
    )
    fields, tensors = gguf_fields(files["f16"])
    assert fields["general.architecture"] == "llama"  # Mistral runs as llama in llama.cpp
    assert fields["tokenizer.ggml.model"] == "llama"
    assert fields["tokenizer.ggml.pre"] == "default"
    assert fields["tokenizer.ggml.add_space_prefix"] is True
    assert fields["tokenizer.ggml.add_bos_token"] is True
    assert fields["tokenizer.ggml.bos_token_id"] == 1 and fields["tokenizer.ggml.eos_token_id"] == 2
    tokens, scores = fields["tokenizer.ggml.tokens"], fields["tokenizer.ggml.scores"]
    types = fields["tokenizer.ggml.token_type"]
    assert len(tokens) == len(scores) == len(types) == config.vocab_size
    byte_a = processor.piece_to_id("<0x41>")
    assert tokens[byte_a] == "<0x41>" and types[byte_a] == TokenType.BYTE
    assert types[0] == TokenType.UNKNOWN and types[1] == types[2] == TokenType.CONTROL
    piece = processor.piece_to_id("▁the")
    assert types[piece] == TokenType.NORMAL
    assert scores[piece] == pytest.approx(processor.get_score(piece))
    assert tokens[-1] == f"[PAD{config.vocab_size - 1}]" and types[-1] == TokenType.UNUSED
    modelfile = (files["f16"].parent / "Modelfile").read_text()
    assert "[INST] {{ .Content }} [/INST]" in modelfile and 'PARAMETER stop "</s>"' in modelfile
    if arch == "mistral":
        assert fields["llama.context_length"] == 256  # the sliding window, not 512
        assert "output.weight" not in tensors  # tied
    else:
        assert fields["llama.context_length"] == 512
        assert tensors["output.weight"] == "F16"


def config_base(finetuned: FineTuned) -> Path:
    """The base folder of a fine-tune (where tokenizer.model is)."""
    adapter_config = json.loads((finetuned.adapter / "adapter_config.json").read_text())
    return Path(adapter_config["base_model_name_or_path"])


def test_llama_cpp_tokenizes_like_transformers(exported: tuple[str, FineTuned, dict]) -> None:
    import sentencepiece as spm
    from transformers import AutoTokenizer

    arch, finetuned, files = exported
    tokenizer = AutoTokenizer.from_pretrained(finetuned.adapter)
    processor = spm.SentencePieceProcessor(
        model_file=str(config_base(finetuned) / "tokenizer.model")
    )
    llm = open_llama(files["f16"], vocab_only=True)
    for text in SPM_SAMPLES:
        expected = tokenizer(text)["input_ids"]  # BOS, then "▁" + text
        assert llm.tokenize(text.encode(), add_bos=True) == expected, text
        assert llm.detokenize(expected).decode() == text  # the dummy prefix dropped after BOS
    chat = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True
    )
    expected = tokenizer(chat, add_special_tokens=False)["input_ids"]
    got = llm.tokenize(chat.encode(), add_bos=False, special=True)
    if arch == "mistral":
        assert got == expected
    else:  # Llama 2's tokenizer (legacy=false) puts no "▁" after <s>; llama.cpp does
        assert got[2:] == expected[1:] and got[1] == processor.piece_to_id("▁")
    # Text that opens with a space: llama.cpp follows sentencepiece, transformers does not.
    for text in LEADING_SPACE_SAMPLES:
        got = llm.tokenize(text.encode(), add_bos=False)
        assert (
            got == processor.encode(text) != tokenizer(text, add_special_tokens=False)["input_ids"]
        )


@pytest.mark.parametrize("kind", ["f32", "f16"])
def test_llama_cpp_greedy_tokens_and_logits_match_transformers(
    kind: str, exported: tuple[str, FineTuned, dict], capsys: pytest.CaptureFixture[str]
) -> None:
    arch, finetuned, files = exported
    check_greedy_tokens_and_logits(f"{arch} (SentencePiece)", kind, finetuned, files[kind], capsys)


def test_llama_cpp_chat_uses_the_stored_template_and_stops_at_eos(
    exported: tuple[str, FineTuned, dict],
) -> None:
    """[INST] ... [/INST] rendered from the stored template, stopped at </s>."""
    arch, _, files = exported
    check_chat_answers(files["f16"], strip=arch == "llama")  # Llama 2 answers after a space


def test_sentencepiece_models_llama_cpp_would_split_differently_are_refused(
    tmp_path: Path,
) -> None:
    """A Unigram model (T5 style) or one that collapses spaces: llama.cpp's `llama` tokenizer
    merges BPE pieces over the raw text, so both are refused before anything is written."""
    from sentencepiece import sentencepiece_model_pb2

    from shared_utils.errors import ConfigurationError
    from training_methods.transfer_learning.serving.gguf.sentencepiece import (
        check_sentencepiece_model,
    )

    path = train_sentencepiece(tmp_path / "tokenizer.model")
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(path.read_bytes())
    check_sentencepiece_model(proto, path, "m")  # the Llama 2 style model passes
    proto.normalizer_spec.remove_extra_whitespaces = True
    with pytest.raises(ConfigurationError, match="remove_extra_whitespaces"):
        check_sentencepiece_model(proto, path, "m")
    proto.normalizer_spec.remove_extra_whitespaces = False
    proto.trainer_spec.model_type = sentencepiece_model_pb2.TrainerSpec.UNIGRAM
    with pytest.raises(ConfigurationError, match="UNIGRAM model") as info:
        check_sentencepiece_model(proto, path, "models/t5")
    assert "models/t5" in str(info.value) and "convert_hf_to_gguf" in str(info.value)


def test_a_sentencepiece_tokenizer_without_its_model_file_is_refused(
    tmp_path: Path, run_main, capsys: pytest.CaptureFixture[str]
) -> None:
    model = build_tiny_sentencepiece_model(tmp_path / "model", "mistral")
    (model / "tokenizer.model").unlink()
    capsys.readouterr()
    status, _, stderr = run_main("export", "--model", model, "--output", tmp_path / "out")
    assert status == 2 and stderr.count("\n") == 1
    assert "tokenizer.model" in stderr and str(model) in stderr
    assert not (tmp_path / "out").exists()
