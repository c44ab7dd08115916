"""SentencePiece vocabularies (Llama 2, Mistral, Phi-3, Gemma) for the GGUF export, read from
tokenizer.model as llama.cpp's converter reads them and checked against transformers' tokenizer
before anything is written (`tokenizer` writes them)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared_utils.errors import ConfigurationError
from training_methods.transfer_learning.serving.gguf.tokenizer import looks_special

if TYPE_CHECKING:
    from sentencepiece import SentencePieceProcessor
    from transformers import PreTrainedTokenizerBase

SENTENCEPIECE_MODEL = "tokenizer.model"
# Texts both tokenizers must split alike before a file is written: llama.cpp's SentencePiece
# tokenizer reproduces the sentencepiece library, so these compare transformers with that.
SENTENCEPIECE_PROBES = (
    "Hello world, this is 12345 and 3.14.",
    "Crème brûlée, naïve — 日本語 🌱",
    "def f(x):\n\treturn x  # done",
)
LEADING_SPACE_PROBE = "  two leading spaces"
SCORE_ADDED = -1000.0  # tokens added by transformers: never merged into, as in llama.cpp
SCORE_UNUSED = -10000.0  # embedding rows without a token


@dataclass(frozen=True)
class SentencePieceVocab:
    """What llama.cpp's `llama` tokenizer needs from tokenizer.model: every token id below the
    model's vocab_size with its piece, score (the merge priority of BPE) and gguf.TokenType
    (NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, or BYTE for the <0xXX> fallback pieces)."""

    path: Path
    tokens: list[str]
    scores: list[float]
    types: list[int]
    add_space_prefix: bool  # sentencepiece's add_dummy_prefix: "▁" before the text
    # Where transformers' Metaspace pre-tokenizer leaves that "▁" out and llama.cpp (like
    # sentencepiece) does not: text that opens with a space; text after a special token when
    # the tokenizer is not `legacy`. Reported, not refused: these are the families' own tokenizers.
    prefix_differences: tuple[str, ...] = ()


def find_sentencepiece_model(folders: Sequence[Path]) -> Path | None:
    for folder in folders:
        candidate = Path(folder) / SENTENCEPIECE_MODEL
        if candidate.is_file():
            return candidate
    return None


def _sentencepiece_proto(path: Path, where: str) -> Any:
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    try:
        proto.ParseFromString(path.read_bytes())
    except Exception as exc:  # protobuf's DecodeError; anything else is the same damage
        raise ConfigurationError(
            f"{where}: {path} is not a SentencePiece model ({type(exc).__name__}) — copy the "
            "base model's tokenizer.model again"
        ) from None
    return proto


def check_sentencepiece_model(proto: Any, path: Path, where: str) -> None:
    """ConfigurationError for a SentencePiece model that llama.cpp's `llama` tokenizer splits
    differently: it runs BPE merges by score on the raw text with spaces as "▁" and nothing else."""
    from sentencepiece import sentencepiece_model_pb2

    trainer, normalizer = proto.trainer_spec, proto.normalizer_spec
    kind = sentencepiece_model_pb2.TrainerSpec.ModelType.Name(trainer.model_type)
    problem = None
    if kind != "BPE":
        problem = f"a {kind} model; llama.cpp's SentencePiece tokenizer merges like BPE only"
    elif normalizer.name not in ("identity", "") or normalizer.precompiled_charsmap:
        problem = f"normalization {normalizer.name!r}, which llama.cpp does not apply"
    elif normalizer.remove_extra_whitespaces:
        problem = "remove_extra_whitespaces=true, which llama.cpp does not do"
    elif not normalizer.escape_whitespaces or trainer.treat_whitespace_as_suffix:
        problem = "a whitespace treatment other than '▁' before words"
    if problem:
        raise ConfigurationError(
            f"{where}: {path} is {problem} — convert the merged folder with llama.cpp's "
            "convert_hf_to_gguf.py"
        )


def read_sentencepiece(
    tokenizer: PreTrainedTokenizerBase, vocab_size: int, folders: Sequence[Path], where: str
) -> SentencePieceVocab:
    """The SentencePiece vocabulary of `tokenizer`, from the first tokenizer.model in `folders`,
    checked against transformers: the same pieces at the same ids, and the same token ids for
    SENTENCEPIECE_PROBES. Tokens transformers added after the model's pieces (chat markers, a
    padding token) follow as CONTROL (special) or USER_DEFINED, then UNUSED `[PADn]` rows."""
    from sentencepiece import SentencePieceProcessor

    path = _model_path(folders, where)
    proto = _sentencepiece_proto(path, where)
    check_sentencepiece_model(proto, path, where)
    processor = SentencePieceProcessor(model_file=str(path))
    pieces = processor.get_piece_size()
    vocab = tokenizer.get_vocab()
    _check_sizes(pieces, vocab, vocab_size, path, where)
    by_id = {index: token for token, index in vocab.items()}
    rows = [
        *_piece_rows(processor, proto, tokenizer, by_id, path, where),
        *_added_rows(tokenizer, by_id, pieces, vocab_size),
    ]
    _check_probes(tokenizer, processor, path, where)
    return SentencePieceVocab(
        path=path,
        tokens=[token for token, _, _ in rows],
        scores=[score for _, score, _ in rows],
        types=[int(kind) for _, _, kind in rows],
        add_space_prefix=bool(proto.normalizer_spec.add_dummy_prefix),
        prefix_differences=_prefix_differences(tokenizer, processor),
    )


def _model_path(folders: Sequence[Path], where: str) -> Path:
    """The first tokenizer.model in `folders`; without one the export cannot read scores."""
    path = find_sentencepiece_model(folders)
    if path is None:
        searched = ", ".join(str(folder) for folder in folders) or where
        raise ConfigurationError(
            f"{where}: a SentencePiece tokenizer without its {SENTENCEPIECE_MODEL} (searched "
            f"{searched}); the GGUF export reads the scores and token types from it — copy the "
            "base model's tokenizer.model into the model folder"
        )
    return path


def _check_sizes(
    pieces: int, vocab: dict[str, int], vocab_size: int, path: Path, where: str
) -> None:
    """ConfigurationError when the model's pieces or the tokenizer's ids do not fit the model's
    `vocab_size` embedding rows."""
    if pieces > vocab_size:
        raise ConfigurationError(
            f"{where}: {path} has {pieces} pieces but the model only {vocab_size} embedding rows "
            "— export the model and tokenizer that were trained together"
        )
    if max(vocab.values(), default=0) >= vocab_size:
        raise ConfigurationError(
            f"the tokenizer has token id {max(vocab.values())} but the model only {vocab_size} "
            "embedding rows — export the model and tokenizer that were trained together"
        )


def _piece_type(
    processor: SentencePieceProcessor, proto: Any, tokenizer: PreTrainedTokenizerBase, index: int
) -> int:
    """The gguf.TokenType of the model's piece `index`, as llama.cpp's converter gives it."""
    from gguf import TokenType

    if processor.is_unknown(index):
        return TokenType.UNKNOWN
    if processor.is_control(index):
        return TokenType.CONTROL
    if processor.is_unused(index):
        return TokenType.UNUSED
    if processor.is_byte(index):
        return TokenType.BYTE
    if proto.pieces[index].type == proto.pieces[index].USER_DEFINED:
        # Gemma's <start_of_turn>/<end_of_turn> are user-defined pieces that transformers
        # marks special: llama.cpp's converter makes those control tokens.
        entry = tokenizer.added_tokens_decoder.get(index)
        special = entry is not None and entry.special
        return TokenType.CONTROL if special else TokenType.USER_DEFINED
    return TokenType.NORMAL


def _piece_rows(
    processor: SentencePieceProcessor,
    proto: Any,
    tokenizer: PreTrainedTokenizerBase,
    by_id: dict[int, str],
    path: Path,
    where: str,
) -> list[tuple[str, float, int]]:
    """(piece, score, type) of every piece of the model; each must be the tokenizer's token at
    the same id, or tokenizer.model is not the one tokenizer.json was made from."""
    rows = []
    for index in range(processor.get_piece_size()):
        piece = processor.id_to_piece(index)
        if by_id.get(index) != piece:
            raise ConfigurationError(
                f"{where}: {path} has {piece!r} at id {index}, the tokenizer "
                f"{by_id.get(index)!r} — tokenizer.model is not the one tokenizer.json was made "
                "from; copy the matching one"
            )
        kind = _piece_type(processor, proto, tokenizer, index)
        rows.append((piece, processor.get_score(index), kind))
    return rows


def _added_rows(
    tokenizer: PreTrainedTokenizerBase, by_id: dict[int, str], pieces: int, vocab_size: int
) -> list[tuple[str, float, int]]:
    """(token, score, type) of the ids from the model's last piece to `vocab_size`: tokens
    transformers added (CONTROL when special, else USER_DEFINED), `[PADn]` rows without one."""
    from gguf import TokenType

    added = tokenizer.added_tokens_decoder
    rows: list[tuple[str, float, int]] = []
    for index in range(pieces, vocab_size):
        token = by_id.get(index)
        entry = added.get(index)
        if token is None:
            rows.append((f"[PAD{index}]", SCORE_UNUSED, TokenType.UNUSED))
        elif (entry is not None and entry.special) or looks_special(token):
            rows.append((token, SCORE_ADDED, TokenType.CONTROL))
        else:
            # llama.cpp matches user tokens in raw text
            rows.append((token.replace("\u2581", " "), SCORE_ADDED, TokenType.USER_DEFINED))
    return rows


def _check_probes(
    tokenizer: PreTrainedTokenizerBase, processor: SentencePieceProcessor, path: Path, where: str
) -> None:
    """ConfigurationError unless transformers splits every SENTENCEPIECE_PROBES text into the
    token ids the SentencePiece model (which llama.cpp follows) gives."""
    for text in SENTENCEPIECE_PROBES:
        expected = processor.encode(text)
        got = tokenizer(text, add_special_tokens=False)["input_ids"]
        if got != expected:
            raise ConfigurationError(
                f"{where}: transformers splits {text!r} into other tokens than {path.name} "
                "(which llama.cpp follows) — the tokenizer's pre-tokenizer or normalizer differs "
                "from the SentencePiece model; convert with llama.cpp's convert_hf_to_gguf.py"
            )


def _prefix_differences(
    tokenizer: PreTrainedTokenizerBase, processor: SentencePieceProcessor
) -> tuple[str, ...]:
    """Where transformers leaves out the "▁" prefix that llama.cpp adds (see
    `SentencePieceVocab.prefix_differences`)."""
    differences = []
    leading = tokenizer(LEADING_SPACE_PROBE, add_special_tokens=False)["input_ids"]
    if leading != processor.encode(LEADING_SPACE_PROBE):
        differences.append("text that starts with a space")
    eos = tokenizer.eos_token
    if eos is not None and tokenizer.eos_token_id is not None:
        after = tokenizer(f"{eos}x", add_special_tokens=False)["input_ids"]
        if after != [tokenizer.eos_token_id, *processor.encode("x")]:
            differences.append("text after a special token such as a chat template's")
    return tuple(differences)
