"""Llama 2 and Mistral 7B style models through the GGUF export, end to end: a SentencePiece BPE
tokenizer (byte fallback, "▁" for spaces, a dummy prefix, trained here with the sentencepiece
package and loaded by transformers from its tokenizer.model, as a hub folder of these families
is), a tiny random `LlamaForCausalLM` / `MistralForCausalLM`, fine-tuned with train-lora's LoRA
on CHATS, exported from the adapter, and run by llama.cpp (llama-cpp-python) against
transformers."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from tests.gguf_roundtrip import check_chat_answers, check_greedy_tokens_and_logits, export_adapter
from tests.test_gguf import (  # noqa: F401  (autouse fixtures imported)
    CHATS,
    TOKENIZER_SAMPLES,
    FineTuned,
    _fields,
    _llama,
    finetune_on_chats,
    llama_cpp_without_amx_repacking,
    one_torch_thread,
)

# Llama 2's chat format without the system turn: BOS before each [INST], a space before the
# answer, EOS after it.
LLAMA2_CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message['role'] == 'user' %}"
    "{{- bos_token + '[INST] ' + message['content'] + ' [/INST]' }}"
    "{%- elif message['role'] == 'assistant' %}"
    "{{- ' ' + message['content'] + ' ' + eos_token }}"
    "{%- endif %}"
    "{%- endfor %}"
)
# Mistral 7B Instruct v0.1's: one BOS, the answer straight after [/INST].
MISTRAL_CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'user' %}"
    "{{- '[INST] ' + message['content'] + ' [/INST]' }}"
    "{%- elif message['role'] == 'assistant' %}"
    "{{- message['content'] + eos_token }}"
    "{%- endif %}"
    "{%- endfor %}"
)
SPM_SAMPLES = [
    *[text for text in TOKENIZER_SAMPLES if not text.startswith(" ")],
    "堆肥需要每周翻动一次。日本語のテキスト、한국어 문장.",
    "I'm 2024's 1234567 people\r\n\r\nyou'LL",
]
# transformers' Metaspace pre-tokenizer adds no "▁" before text that already opens with a space,
# where sentencepiece and llama.cpp do: these split differently (the export warns).
LEADING_SPACE_SAMPLES = [text for text in TOKENIZER_SAMPLES if text.startswith(" ")]


def train_sentencepiece(path: Path, vocab_size: int = 600) -> Path:
    """A SentencePiece BPE model trained the way Llama 2's was: byte fallback, digits split,
    identity normalisation, whitespace kept as written, a dummy "▁" prefix; <unk> <s> </s> at
    ids 0, 1, 2."""
    import sentencepiece as spm

    from training_methods.transfer_learning.tiny_model import sample_corpus_texts

    texts = [*sample_corpus_texts(), *[q + " " + a for q, a in CHATS], *SPM_SAMPLES]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts * 2),
        model_writer=model,
        model_type="bpe",
        vocab_size=vocab_size,
        byte_fallback=True,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        add_dummy_prefix=True,
        character_coverage=1.0,
        hard_vocab_limit=False,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        minloglevel=2,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.getvalue())
    return path


def sentencepiece_tokenizer(folder: Path, chat_template: str, legacy: bool) -> Any:
    """The tokenizer transformers makes from `folder`'s tokenizer.model and a tokenizer_config.json
    like the hub's (LlamaTokenizer; `legacy`: Mistral's true, "▁" before text after a special
    token as in sentencepiece; Llama 2's false, none there), with `chat_template`, saved there."""
    from transformers import AutoTokenizer

    train_sentencepiece(folder / "tokenizer.model")
    config = {"tokenizer_class": "LlamaTokenizer", "legacy": legacy, "add_bos_token": True}
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.chat_template = chat_template
    tokenizer.save_pretrained(folder)  # tokenizer.json; tokenizer.model stays
    return tokenizer


def build_tiny_sentencepiece_model(folder: Path, arch: str, **overrides: Any) -> Path:
    """A random Llama (untied) or Mistral (tied, a sliding window shorter than its context)
    with a SentencePiece tokenizer, saved like a hub folder. Norm weights are random: ones would
    hide a misplaced tensor."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM

    template = LLAMA2_CHAT_TEMPLATE if arch == "llama" else MISTRAL_CHAT_TEMPLATE
    tokenizer = sentencepiece_tokenizer(folder, template, legacy=arch == "mistral")
    common = dict(
        vocab_size=-(-len(tokenizer) // 64) * 64,  # rows padded to a round size
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        rms_norm_eps=1e-5,
        initializer_range=0.1,  # wide enough that LoRA can fit CHATS (tiny_model's docstring)
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    if arch == "llama":
        config: Any = LlamaConfig(**{**common, "tie_word_embeddings": False, **overrides})
        model: Any = LlamaForCausalLM
    else:
        mistral = {**common, "sliding_window": 256, "tie_word_embeddings": True, **overrides}
        config = MistralConfig(**mistral)
        model = MistralForCausalLM
    torch.manual_seed(0)
    model = model(config)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "norm" in name:
                parameter.uniform_(0.5, 1.5)
    model.save_pretrained(folder)
    return folder


ARCHITECTURES = ["llama", "mistral"]
_EXPORTS: dict[tuple[Path, str], tuple[FineTuned, dict[str, Path]]] = {}


@pytest.fixture(scope="module", params=ARCHITECTURES)
def exported(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, FineTuned, dict[str, Path]]:
    """(architecture, the fine-tune, type → GGUF file exported from its adapter in one call)."""
    arch = request.param
    key = (tmp_path_factory.getbasetemp(), arch)
    if key not in _EXPORTS:
        base = build_tiny_sentencepiece_model(tmp_path_factory.mktemp(f"tiny-spm-{arch}"), arch)
        finetuned = finetune_on_chats(tmp_path_factory, base)
        assert not (finetuned.adapter / "tokenizer.model").exists()  # found in the base folder
        _EXPORTS[key] = (finetuned, export_adapter(tmp_path_factory, finetuned, arch))
    finetuned, files = _EXPORTS[key]
    return arch, finetuned, files


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
    fields, tensors = _fields(files["f16"])
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
    llm = _llama(files["f16"], vocab_only=True)
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
