"""The config sections of the shared keys (`common`, `logging`) and of the data commands
(`document_processing` for extract, `qa_generation` for generate-qa): one dataclass per section,
its defaults, help texts and range checks; `setting` declares a field with its default and help
text. The training sections are in `config_transfer_learning` and `config_reinforcement_learning`;
the whole config and its loading are in `shared_utils.config`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from shared_utils.errors import ConfigurationError

if TYPE_CHECKING:
    from shared_utils.config import ToolkitConfig


def setting(text: str, default: Any = dataclasses.MISSING, **kwargs: Any) -> Any:
    """A dataclass field with help text in its metadata."""
    if isinstance(default, (list, dict)):
        value = default
        return field(default_factory=lambda: type(value)(value), metadata={"help": text}, **kwargs)
    return field(default=default, metadata={"help": text}, **kwargs)


# --------------------------------------------------------------------------------------------------
# common
# --------------------------------------------------------------------------------------------------


@dataclass
class CommonConfig:
    seed: int = setting("Random seed for every command that draws random numbers.", 42)
    device: Literal["auto", "cuda", "mps", "cpu"] = setting(
        "Where models run: auto picks cuda, then mps, then cpu.", "auto"
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = setting("Logging verbosity.", "INFO")


# --------------------------------------------------------------------------------------------------
# document_processing
# --------------------------------------------------------------------------------------------------


@dataclass
class PdfConfig:
    engine: Literal["pdfplumber", "pypdf", "pypdfium2"] = setting(
        "Primary PDF text engine. pdfplumber keeps layout best; pypdfium2 is fastest.", "pdfplumber"
    )
    fallback_to_pypdf: bool = setting(
        "When the primary engine fails on a file or a page fails the quality check, retry "
        "with pypdf.",
        True,
    )
    extract_by_page: bool = setting(
        "Keep each page its own unit (chunks never span pages); false lets text flow across pages.",
        True,
    )
    x_tolerance: float = setting(
        "pdfplumber horizontal gap (points) that still joins letters into one word; 3 merges words "
        "on LaTeX PDFs, 1.5 keeps the spaces.",
        1.5,
    )
    y_tolerance: float = setting("pdfplumber vertical tolerance (points) for one text line.", 3.0)
    use_text_flow: bool = setting(
        "Follow the PDF's content-stream order, which keeps two-column text in reading order.", True
    )
    password: str = setting("Password tried on encrypted PDFs after the empty one.", "")
    pages_per_task: int = setting(
        "A PDF with more pages is split into page ranges of this size that run in parallel.", 20
    )
    max_mean_word_length: float = setting(
        "Quality check: a page whose mean word length exceeds this lost its spaces and is retried "
        "with the fallback engine.",
        12.0,
    )


RECORD_KIND_NAMES = (
    "section",
    "continuation",
    "topic",
    "question",
    "cloze",
)  # see instruction_records.py


@dataclass
class DocumentProcessingConfig:
    chunk_size: int = setting("Largest chunk, in characters (or tokens with --tokenizer).", 512)
    overlap_size: int = setting(
        "Whole trailing sentences of up to this many characters (or tokens) repeated at the start "
        "of the next chunk.",
        50,
    )
    min_chunk_size: int = setting(
        "Chunks shorter than this (characters) are merged into their neighbour in the same "
        "section.",
        20,
    )
    tokenizer: str | None = setting(
        "Path of a local Hugging Face tokenizer: chunk sizes are then counted in its tokens.", None
    )
    output_format: Literal["jsonl", "text"] = setting(
        "jsonl: chunk records; text: one cleaned .txt per document.", "jsonl"
    )
    instruction_format: bool = setting(
        "Also write instruction records (alpaca and chat) that teach what the documents say.",
        False,
    )
    record_kinds: list[str] = setting(
        "Kinds of instruction records: section (recite a section), continuation (continue a "
        "passage), topic (questions about each sentence's names and key terms, and about its "
        "subject with two more of its words, answered by the sentence), question (a sentence "
        "or its clause with a name or number replaced by a question word, answered by the "
        "sentence), cloze (a sentence with a name or number blanked, answered by it). Topic "
        "and question by default: on a small model they teach the most facts per training "
        "minute (scripts/benchmark_knowledge.py).",
        ["topic", "question"],
    )
    question_phrasings: int = setting(
        "Topic records per sentence, each about another of its key terms in another wording.", 3
    )
    val_ratio: float = setting(
        "Share of documents (by hash of their path) written to valid.jsonl instead of train.jsonl.",
        0.0,
    )
    workers: int = setting("Worker processes; 0 means one per CPU core.", 0)
    file_timeout: float = setting(
        "Seconds one file (or one page range of a large PDF) may take before its worker is killed.",
        300.0,
    )
    worker_memory_mb: float = setting(
        "Memory (MB) one worker may take beyond what it starts with (Linux); a file that needs "
        "more, such as a PDF page that inflates to gigabytes, fails with the reason.",
        2000.0,
    )
    max_file_size_mb: float = setting("Files larger than this are skipped and reported.", 200.0)
    max_text_length: int = setting(
        "Sanitisation limit: a document's text is cut at this many characters (reported).",
        50_000_000,
    )
    remove_headers_footers: bool = setting(
        "Drop running headers, footers and page numbers that repeat across pages.", True
    )
    deduplicate: bool = setting("Drop exact duplicate chunks (counted in the report).", True)
    ocr: Literal["auto", "off", "force"] = setting(
        "OCR (Tesseract, offline) for image files and PDF pages: auto reads pages without a text "
        "layer and .png/.jpg/.tiff files; off never runs it (such pages are reported as needing "
        "OCR); force reads every PDF page from its image, text layer or not.",
        "auto",
    )
    pdf: PdfConfig = field(default_factory=PdfConfig)

    def check(self) -> None:
        """Range checks the types alone cannot express; raises ConfigurationError naming the key."""
        limits = [
            ("chunk_size", self.chunk_size > 0, "must be at least 1"),
            (
                "overlap_size",
                0 <= self.overlap_size < self.chunk_size,
                "must be in [0, chunk_size)",
            ),
            ("min_chunk_size", self.min_chunk_size >= 0, "must be 0 or more"),
            ("val_ratio", 0.0 <= self.val_ratio < 1.0, "must be in [0, 1)"),
            ("workers", self.workers >= 0, "must be 0 (one per core) or more"),
            ("file_timeout", self.file_timeout > 0, "must be more than 0 seconds"),
            ("worker_memory_mb", self.worker_memory_mb >= 100, "must be at least 100"),
            ("max_file_size_mb", self.max_file_size_mb > 0, "must be more than 0"),
            ("max_text_length", self.max_text_length > 0, "must be at least 1"),
            ("pdf.pages_per_task", self.pdf.pages_per_task >= 1, "must be at least 1"),
            ("pdf.x_tolerance", self.pdf.x_tolerance >= 0, "must be 0 or more"),
            (
                "record_kinds",
                bool(self.record_kinds) and set(self.record_kinds) <= set(RECORD_KIND_NAMES),
                f"must list one or more of {', '.join(RECORD_KIND_NAMES)}",
            ),
            ("question_phrasings", self.question_phrasings >= 1, "must be at least 1"),
            ("ocr", self.ocr in ("auto", "off", "force"), "must be auto, off or force"),
        ]
        for key, ok, rule in limits:
            if not ok:
                value = getattr(self.pdf, key[4:]) if key.startswith("pdf.") else getattr(self, key)
                raise ConfigurationError(
                    f"config key 'document_processing.{key}' is {value!r}; it {rule}."
                )


# --------------------------------------------------------------------------------------------------
# logging (train-lora, train-qlora and train-rl)
# --------------------------------------------------------------------------------------------------


@dataclass
class LoggingConfig:
    log_dir: str = setting("TensorBoard folder inside each run's output directory.", "logs")
    use_tensorboard: bool = setting("Write TensorBoard event files.", True)
    use_wandb: bool = setting(
        "Also log to Weights & Biases (offline when no API key is set).", False
    )
    wandb_project: str = setting("Weights & Biases project name.", "llm-complete-toolkit")


def check_training_sections(config: ToolkitConfig) -> None:
    """Range check of common.seed, shared by the training commands (each command's own keys are
    checked by its section's `check`)."""
    if not 0 <= config.common.seed < 2**32:
        raise ConfigurationError(
            f"config key 'common.seed' is {config.common.seed!r}; it must be in [0, 2**32 - 1] "
            "(numpy's seed range)."
        )


# --------------------------------------------------------------------------------------------------
# qa_generation (generate-qa)
# --------------------------------------------------------------------------------------------------


@dataclass
class QaGenerationConfig:
    teacher: str | None = setting(
        "The model that writes the pairs: the URL of an OpenAI-compatible chat-completions server "
        "(LM Studio http://localhost:1234/v1, Ollama http://localhost:11434/v1, vLLM "
        "http://localhost:8000/v1, llama.cpp's server http://localhost:8080/v1), a .gguf file "
        "run in-process by llama.cpp, or a transformers model (a save_pretrained folder, or a hub "
        "id already in the Hugging Face cache) run in-process on common.device, batched. "
        "--teacher overrides it.",
        None,
    )
    teacher_model: str | None = setting(
        "Model name sent to a server; null takes the one model the server lists (an error names "
        "them when it lists several).",
        None,
    )
    api_key_env: str = setting(
        "Environment variable holding the server's API key, sent as a bearer token when set.",
        "OPENAI_API_KEY",
    )
    pairs_per_chunk: int = setting(
        "Question/answer pairs asked per chunk, each about another window of sentences of it.", 3
    )
    sentences_per_pair: int = setting(
        "Sentences a pair is asked about: small teachers write grounded pairs about one or two "
        "sentences, and invent when given a whole chunk.",
        2,
    )
    concurrency: int = setting(
        "Requests in flight at once to an HTTP teacher; a transformers teacher generates up to "
        "this many together as one batch (a .gguf teacher runs one at a time).",
        1,
    )
    structured_output: Literal["auto", "json_schema", "json_object", "ollama", "prompt"] = setting(
        "How the reply is held to the pair's JSON schema: auto probes once per run, in this order, "
        "json_schema (OpenAI response_format; LM Studio, vLLM), json_object (response_format "
        "json_object with a schema; llama-cpp-python's server), ollama (Ollama's format), prompt "
        "(JSON asked for in the prompt only). A .gguf teacher always uses a grammar; a "
        "transformers teacher asks in the prompt and starts the reply with the JSON's opening "
        "(prompt+prefill).",
        "auto",
    )
    temperature: float = setting("Sampling temperature of the teacher (0: greedy).", 0.0)
    max_tokens: int = setting("Longest reply, in tokens.", 256)
    request_timeout: float = setting("Seconds one request may take before it is retried.", 120.0)
    max_retries: int = setting(
        "Retries of a request that failed with a connection error, timeout, HTTP 429 or 5xx "
        "(exponential backoff with jitter), or whose reply did not parse.",
        2,
    )
    max_consecutive_failures: int = setting(
        "Stop the run after this many requests in a row failed (errors or empty replies); what "
        "was finished stays cached.",
        8,
    )
    min_grounding: float = setting(
        "Grounding check: share of the answer's content words that must occur in its chunk.", 0.75
    )
    near_duplicate_threshold: float = setting(
        "Questions of one document whose word sets overlap this much (Jaccard) are duplicates; "
        "the first is kept.",
        0.8,
    )
    judge: bool = setting(
        "Also ask the teacher to rate every pair that passed the filters (--judge).", False
    )
    judge_min_rating: int = setting("With judge: pairs rated below this (1 to 5) are dropped.", 4)
    valid_ratio: float = setting(
        "Share of documents whose pairs go to valid.jsonl (whole documents, by hash of the path).",
        0.0,
    )
    test_ratio: float = setting(
        "Share of documents whose pairs go to test.jsonl (whole documents, by hash of the path). "
        "0 by default, like the other splits: a document held out teaches nothing.",
        0.0,
    )
    context_size: int = setting("Context window (tokens) of a .gguf teacher.", 2048)

    def check(self) -> None:
        """Range checks the types alone cannot express; raises ConfigurationError naming the key."""
        rules = [
            ("pairs_per_chunk", 1 <= self.pairs_per_chunk <= 100, "must be in [1, 100]"),
            ("sentences_per_pair", 1 <= self.sentences_per_pair <= 20, "must be in [1, 20]"),
            ("concurrency", 1 <= self.concurrency <= 256, "must be in [1, 256]"),
            ("temperature", 0.0 <= self.temperature <= 2.0, "must be in [0, 2]"),
            ("max_tokens", 16 <= self.max_tokens <= 32768, "must be in [16, 32768]"),
            ("request_timeout", self.request_timeout > 0, "must be more than 0 seconds"),
            ("max_retries", 0 <= self.max_retries <= 20, "must be in [0, 20]"),
            ("max_consecutive_failures", self.max_consecutive_failures >= 1, "must be at least 1"),
            ("min_grounding", 0.0 <= self.min_grounding <= 1.0, "must be in [0, 1]"),
            (
                "near_duplicate_threshold",
                0.0 < self.near_duplicate_threshold <= 1.0,
                "must be in (0, 1]",
            ),
            ("judge_min_rating", 1 <= self.judge_min_rating <= 5, "must be in [1, 5]"),
            ("valid_ratio", 0.0 <= self.valid_ratio < 1.0, "must be in [0, 1)"),
            ("test_ratio", 0.0 <= self.test_ratio < 1.0, "must be in [0, 1)"),
            (
                "test_ratio",
                self.valid_ratio + self.test_ratio < 1.0,
                "must leave documents for training: valid_ratio + test_ratio must be below 1",
            ),
            ("context_size", 256 <= self.context_size <= 1_048_576, "must be in [256, 1048576]"),
        ]
        for key, ok, rule in rules:
            if not ok:
                raise ConfigurationError(
                    f"config key 'qa_generation.{key}' is {getattr(self, key)!r}; it {rule}."
                )
