"""A transformers model as the teacher: a save_pretrained folder or a cached hub id, run in this
process on `common.device` (a GPU when there is one), the concurrent requests generated together.

Batching: the asker calls `complete` from up to `qa_generation.concurrency` threads at once. Each
call renders its messages with the model's chat template and queues them; one worker thread takes
what is waiting (up to `concurrency` requests with the same sampling settings, after waiting
`GATHER_SECONDS` for the rest of a round to arrive), left-pads it into one `model.generate` and
hands each caller its own reply. A batch that fails fails its requests only (RequestFailed).
`max_concurrency` is None: the asker's `concurrency` threads are the batch size.

Structured output: no grammar library constrains transformers here, so the JSON is asked for in
the prompt and the assistant's reply is prefilled with the opening of the object the schema wants
(`{"question": "`); the model continues from there and the reply is that opening plus what it
wrote. A row stops once its object closes (SmolLM2 would go on with extra keys or prose until
max_tokens). Nothing holds the reply to the schema, so some replies do not parse: they are asked
again and counted like any other. Its form in the report: `prompt+prefill`.

Nothing is downloaded: a hub id must already be in the Hugging Face cache.
"""

from __future__ import annotations

import hashlib
import json
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from document_processing.qa_generation.teachers import (
    InProcessTeacher,
    Messages,
    RequestFailed,
    first_line,
)
from shared_utils.errors import ConfigurationError

PREFILL_FORM = "prompt+prefill"
GATHER_SECONDS = 0.05  # how long a batch waits for the other requests of its round
CLOSED = "the teacher was closed before this request finished"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def reply_prefix(schema: dict[str, Any]) -> str:
    """The opening of the JSON object `schema` asks for, up to its first required property's
    value: `{"question": "` for a string, `{"rating": ` otherwise, `{` without properties."""
    properties = schema.get("properties") or {}
    names = list(schema.get("required") or properties)
    if not names:
        return "{"
    opening = "{" + json.dumps(names[0]) + ": "
    return opening + '"' if properties.get(names[0], {}).get("type") == "string" else opening


# --------------------------------------------------------------------------------------------------
# Finding the model
# --------------------------------------------------------------------------------------------------


def model_folder(spec: str) -> Path | None:
    """The folder of the transformers model `spec` names: itself when it is a folder with
    config.json, the cached snapshot when it is a hub id in the Hugging Face cache; None when it
    is neither a folder nor a hub id. One-line ConfigurationError for a folder without config.json
    or a hub id that is not cached."""
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ConfigurationError(
                f"--teacher {spec}: a folder without config.json — give a model folder made by "
                "save_pretrained, a server URL or a .gguf file"
            )
        return path.resolve()
    if path.exists():
        return None
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError

    try:
        cached = try_to_load_from_cache(spec, "config.json")
    except HFValidationError:  # not a hub id either
        return None
    if not isinstance(cached, str):
        raise ConfigurationError(
            f"--teacher {spec}: no such folder, and no model {spec} in the Hugging Face cache "
            f"(nothing is downloaded here) — download it once with `hf download {spec}`, or give "
            "a folder made by save_pretrained"
        )
    return Path(cached).parent


def json_closed(text: str) -> bool:
    """Whether `text` starts with a complete JSON value (the reply has closed its object)."""
    try:
        json.JSONDecoder().raw_decode(text)
    except json.JSONDecodeError:
        return False
    return True


def weights_identity(folder: Path) -> str:
    """A short hash of config.json and the weight files' names, sizes and times: it changes
    when the weights are saved again, without reading gigabytes."""
    digest = hashlib.sha256((folder / "config.json").read_bytes())
    for path in sorted(folder.iterdir()):
        if path.name.endswith(WEIGHT_SUFFIXES):
            stat = path.stat()
            digest.update(f"|{path.name}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


# --------------------------------------------------------------------------------------------------
# Batching
# --------------------------------------------------------------------------------------------------


@dataclass(eq=False)
class Job:
    """One request waiting for its batch: its prompt tokens (the prefix last), the prefix of its
    reply, and its sampling settings."""

    prompt_ids: list[int]
    prefix: str
    temperature: float
    max_tokens: int
    reply: Future[str] = field(default_factory=Future)

    @property
    def settings(self) -> tuple[float, int]:
        return self.temperature, self.max_tokens


class Batcher:
    """One worker thread that runs the waiting jobs, up to `max_batch` of the same settings at a
    time, through `run_batch` (jobs in, one reply each out) and hands each caller its reply."""

    def __init__(self, run_batch: Callable[[list[Job]], list[str]], *, max_batch: int) -> None:
        self.run_batch = run_batch
        self.max_batch = max_batch
        self.closing = threading.Event()  # set by close(); a running batch should stop early
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._lock = threading.Lock()  # no job is queued once closing is set
        self._thread = threading.Thread(target=self._loop, name="qa-teacher-batches", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> str:
        """Queue `job` and wait for its reply; RequestFailed when its batch failed."""
        with self._lock:
            if self.closing.is_set():
                raise RequestFailed(CLOSED)
            self._queue.put(job)
        return job.reply.result()

    def close(self) -> None:
        """Stop the worker: the running batch is cut short, every unfinished job fails."""
        with self._lock:
            self.closing.set()
            self._queue.put(None)
        self._thread.join()

    def _loop(self) -> None:
        waiting: list[Job] = []
        while not self.closing.is_set():
            if not waiting:
                job = self._queue.get()
                if job is None:
                    break
                waiting.append(job)
            self._gather(waiting)
            if self.closing.is_set():
                break
            settings = waiting[0].settings
            batch = [job for job in waiting if job.settings == settings][: self.max_batch]
            waiting = [job for job in waiting if job not in batch]
            self._run(batch)
        while not self._queue.empty():
            job = self._queue.get()
            if job is not None:
                waiting.append(job)
        for job in waiting:
            job.reply.set_exception(RequestFailed(CLOSED))

    def _gather(self, waiting: list[Job]) -> None:
        """Add to `waiting` the jobs that arrive within GATHER_SECONDS, until the first job's
        batch is full."""
        deadline = time.monotonic() + GATHER_SECONDS
        settings = waiting[0].settings
        while sum(job.settings == settings for job in waiting) < self.max_batch:
            try:
                job = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                return
            if job is None:
                return
            waiting.append(job)

    def _run(self, batch: list[Job]) -> None:
        try:
            replies = self.run_batch(batch)
            if len(replies) != len(batch):
                raise RuntimeError(f"{len(replies)} replies to {len(batch)} requests")
        except Exception as exc:  # one line for each request of the batch; the run goes on
            reason = f"generate failed ({type(exc).__name__}: {first_line(str(exc))})"
            for job in batch:
                job.reply.set_exception(RequestFailed(reason))
            return
        for job, reply in zip(batch, replies, strict=True):
            if self.closing.is_set():  # cut short by close(): not a reply to cache
                job.reply.set_exception(RequestFailed(CLOSED))
            else:
                job.reply.set_result(reply)


# --------------------------------------------------------------------------------------------------
# The teacher
# --------------------------------------------------------------------------------------------------


class TransformersTeacher(InProcessTeacher):
    """A transformers causal LM run in this process (module docstring)."""

    max_concurrency: int | None = None  # every request in flight joins a batch of up to as many
    form: str | None = PREFILL_FORM

    def __init__(self, name: str, folder: Path, *, device: str, batch_size: int) -> None:
        import torch
        from safetensors import SafetensorError
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        from shared_utils.chat_templates import ensure_chat_template
        from shared_utils.training_utils import resolve_device

        self.name = name
        self.device = resolve_device(device)
        dtype = torch.float32
        if self.device.type == "cuda":
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # no weight-loading bar above the run's own
        try:
            self._tokenizer = AutoTokenizer.from_pretrained(folder)
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
        except (OSError, ValueError, SafetensorError) as exc:
            raise ConfigurationError(
                f"--teacher {name}: transformers cannot load it ({first_line(str(exc))}) — give "
                "a folder made by save_pretrained, with its tokenizer"
            ) from None
        finally:
            if bars:
                hf_logging.enable_progress_bar()
        self._model = model.to(self.device).eval()
        ensure_chat_template(self._tokenizer)
        configured = getattr(self._model.generation_config, "eos_token_id", None)
        extra = configured if isinstance(configured, list) else [configured]
        ids = [self._tokenizer.eos_token_id, *extra]
        self._stops = list(dict.fromkeys(int(i) for i in ids if i is not None))
        pad = self._tokenizer.pad_token_id
        self._pad_id = int(pad) if pad is not None else self._stops[0]
        config = self._model.config
        self._context: int | None = getattr(config, "max_position_embeddings", None) or getattr(
            config, "n_positions", None
        )
        # A folder by its resolved path; a hub id as given (its snapshot path is per machine).
        where = folder if Path(name).expanduser().is_dir() else name
        self.identity = f"transformers|{where}|{weights_identity(folder)}"
        self.batch_size = batch_size
        self.probe = {PREFILL_FORM: "in-process, always"}
        self._tokenizer_lock = threading.Lock()
        self._batcher = Batcher(self._generate, max_batch=batch_size)

    @property
    def description(self) -> str:
        return (
            f"{self.name} (in-process, transformers on {self.device.type}, batches of up to "
            f"{self.batch_size})"
        )

    def _prompt_ids(self, messages: Messages, prefix: str) -> list[int]:
        from shared_utils.chat_templates import render_chat_template

        text = render_chat_template(self._tokenizer, messages, add_generation_prompt=True)
        text += prefix
        bos = self._tokenizer.bos_token
        with self._tokenizer_lock:
            encoded = self._tokenizer(text, add_special_tokens=not (bos and text.startswith(bos)))
        return list(encoded["input_ids"])

    def complete(
        self, messages: Messages, schema: dict[str, Any], *, temperature: float, max_tokens: int
    ) -> str:
        prefix = reply_prefix(schema)
        ids = self._prompt_ids(messages, prefix)
        if self._context is not None and len(ids) + max_tokens > self._context:
            raise RequestFailed(
                f"the prompt is {len(ids)} tokens and max_tokens {max_tokens}, more than the "
                f"model's context of {self._context} — lower qa_generation.max_tokens"
            )
        return prefix + self._batcher.submit(Job(ids, prefix, temperature, max_tokens))

    def _stopping(self, jobs: list[Job], width: int) -> Any:
        """Stops a row once its reply has closed its JSON object (a small model goes on with
        more keys or prose until max_tokens), and every row once the teacher is closing."""
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        closing, decode = self._batcher.closing, self._tokenizer.decode
        done = [False] * len(jobs)

        class Closed(StoppingCriteria):
            def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> Any:
                for row, job in enumerate(jobs):
                    # Decode the whole reply only when its last token may close the object.
                    if not done[row] and "}" in decode(input_ids[row, -1:]):
                        done[row] = json_closed(job.prefix + decode(input_ids[row, width:]))
                stop = [closing.is_set() or finished for finished in done]
                return torch.tensor(stop, dtype=torch.bool, device=input_ids.device)

        return StoppingCriteriaList([Closed()])

    def _generate(self, jobs: list[Job]) -> list[str]:
        """One left-padded `model.generate` for `jobs` (same settings); the new text of each."""
        import torch
        from transformers import GenerationConfig

        width = max(len(job.prompt_ids) for job in jobs)
        input_ids = torch.full((len(jobs), width), self._pad_id, dtype=torch.long)  # (batch, width)
        attention_mask = torch.zeros_like(input_ids)
        for row, job in enumerate(jobs):
            input_ids[row, width - len(job.prompt_ids) :] = torch.tensor(job.prompt_ids)
            attention_mask[row, width - len(job.prompt_ids) :] = 1
        temperature, max_tokens = jobs[0].settings
        # Greedy at 0; else plain temperature sampling (no top-k or top-p), as servers do.
        sampling = {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0}
        config = GenerationConfig(
            max_new_tokens=max_tokens,
            num_beams=1,
            eos_token_id=self._stops,
            pad_token_id=self._pad_id,
            **(sampling if temperature > 0 else {"do_sample": False}),
        )
        with torch.inference_mode():
            output = self._model.generate(
                input_ids=input_ids.to(self.device),
                attention_mask=attention_mask.to(self.device),
                generation_config=config,
                stopping_criteria=self._stopping(jobs, width),
            )  # (batch, width + generated)
        replies = []
        for row in range(len(jobs)):
            new_tokens = output[row, width:].tolist()
            end = next((i for i, t in enumerate(new_tokens) if t in self._stops), len(new_tokens))
            replies.append(self._tokenizer.decode(new_tokens[:end], skip_special_tokens=True))
        return replies

    def close(self) -> None:
        self._batcher.close()
