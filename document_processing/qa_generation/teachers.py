"""The teacher models that write the pairs: a chat-completions server by URL, a local .gguf file,
or a transformers model (`open_teacher` picks by what `--teacher` names).

`HttpTeacher` speaks the OpenAI chat-completions protocol (LM Studio, Ollama, vLLM, llama.cpp's
and llama-cpp-python's servers) with httpx: explicit connect and read timeouts, retries with
exponential backoff and jitter on connection errors, timeouts, HTTP 429 and 5xx (never on other
4xx), and an API key from an environment variable when it is set. Servers differ in how they hold
a reply to a JSON schema, so the first request of a run probes the forms in `STRUCTURED_FORMS`
order and keeps the first one the server accepts and whose reply parses:

- json_schema: OpenAI's `response_format: {"type": "json_schema", ...}` (LM Studio, vLLM, recent
  Ollama); llama-cpp-python's server answers it with HTTP 500;
- json_object: `response_format: {"type": "json_object", "schema": ...}` (llama-cpp-python's
  server turns the schema into a grammar);
- ollama: Ollama's own `format: <schema>` (tried only when the server says it is Ollama);
- prompt: no constraint, the JSON is asked for in the prompt only.

`GgufTeacher` runs a .gguf file in this process through llama-cpp-python and holds every reply to
the schema with a grammar. `transformers_teacher.TransformersTeacher` runs a model folder or a
cached hub id in this process (on a GPU when there is one), concurrent requests in one batch.
"""

from __future__ import annotations

import json
import logging
import random
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

from shared_utils.errors import ConfigurationError, LLMToolkitError

logger = logging.getLogger(__name__)

STRUCTURED_FORMS = ("json_schema", "json_object", "ollama", "prompt")
USUAL_URLS = (
    "LM Studio http://localhost:1234/v1, Ollama http://localhost:11434/v1, vLLM "
    "http://localhost:8000/v1, llama.cpp's server http://localhost:8080/v1"
)
CONNECT_TIMEOUT = 10.0
BACKOFF_SECONDS = 1.0  # first retry waits about this long, doubling up to BACKOFF_CAP
BACKOFF_CAP = 30.0
TRANSIENT_STATUSES = frozenset({429, 502, 503, 504})  # retried even while probing a form
MESSAGE_CHARS = 200

Messages = list[dict[str, str]]


class TeacherError(LLMToolkitError):
    """The teacher cannot be used: unreachable, unknown model, or failing every request."""


class RequestFailed(Exception):
    """One request failed for good (after its retries); the run counts it and goes on."""

    def __init__(self, reason: str, *, status: int | None = None, unreachable: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.unreachable = unreachable


class Teacher(Protocol):
    description: str  # for the report and the summary line
    identity: str  # what the cache key holds of the teacher
    form: str | None  # the structured-output form in use, once known
    max_concurrency: int | None  # None: as many requests as asked

    def complete(
        self, messages: Messages, schema: dict[str, Any], *, temperature: float, max_tokens: int
    ) -> str: ...

    def choose_form(
        self,
        messages: Messages,
        schema: dict[str, Any],
        parses: Callable[[str], bool],
        *,
        temperature: float,
        max_tokens: int,
    ) -> str: ...

    def close(self) -> None: ...


def first_line(text: str) -> str:
    line = next((part.strip() for part in str(text).splitlines() if part.strip()), "")
    return line if len(line) <= MESSAGE_CHARS else line[: MESSAGE_CHARS - 3] + "..."


def normalise_base_url(url: str) -> str:
    """The API root of a server URL: `http://host:port/v1` (a bare host gets /v1, an endpoint
    such as .../v1/chat/completions is cut back to its root)."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigurationError(
            f"--teacher {url}: not an http(s) URL — give a server URL ({USUAL_URLS}) or a "
            ".gguf file"
        )
    path = parts.path.rstrip("/")
    for endpoint in ("/chat/completions", "/completions", "/models"):
        path = path.removesuffix(endpoint)
    return urlunsplit((parts.scheme, parts.netloc, path or "/v1", "", ""))


def _error_message(response: Any) -> str:
    """The server's error text of an HTTP error response, on one line."""
    try:
        body = response.json()
    except ValueError:
        return first_line(response.text) or response.reason_phrase
    error = body.get("error", body) if isinstance(body, dict) else body
    if isinstance(error, dict):
        error = error.get("message") or error.get("detail") or json.dumps(error)
    return first_line(str(error))


def _backoff(attempt: int) -> float:
    return min(BACKOFF_CAP, BACKOFF_SECONDS * 2**attempt) * random.uniform(0.5, 1.0)


class HttpTeacher:
    """An OpenAI-compatible chat-completions server (see the module docstring)."""

    max_concurrency: int | None = None

    def __init__(
        self,
        url: str,
        *,
        model: str | None,
        api_key: str | None,
        api_key_env: str,
        timeout: float,
        max_retries: int,
        form: str | None,
        concurrency: int,
    ) -> None:
        import httpx

        self.base_url = normalise_base_url(url)
        self.model = model
        self.api_key_env = api_key_env
        self.max_retries = max_retries
        self.form = form
        self.probe: dict[str, str] = {}  # form -> what the server did with it
        self.is_ollama = False
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        # httpx logs every request at INFO: it would bury the progress bar and one-line errors.
        logging.getLogger("httpx").setLevel(logging.WARNING)
        self._client = httpx.Client(
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=min(timeout, CONNECT_TIMEOUT)),
            limits=httpx.Limits(max_connections=concurrency + 2),
        )
        self._connected = False

    @property
    def description(self) -> str:
        return f"{self.base_url} (model {self.model})"

    @property
    def identity(self) -> str:
        return f"http|{self.base_url}|{self.model}"

    # -- connecting -----------------------------------------------------------------------------

    def _unreachable(self, exc: Exception) -> TeacherError:
        reason = first_line(str(exc)) or type(exc).__name__
        return TeacherError(
            f"cannot reach the teacher at {self.base_url} ({reason}) — start the server or fix "
            f"the URL; the usual ones: {USUAL_URLS}"
        )

    def connect(self) -> None:
        """Check that the server answers and serves the model (or pick its only model)."""
        import httpx

        if self._connected:
            return
        try:
            response = self._client.get(f"{self.base_url}/models")
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None
        if response.status_code in (401, 403):
            raise TeacherError(
                f"the teacher at {self.base_url} refused the request (HTTP "
                f"{response.status_code}: {_error_message(response)}) — put its API key in the "
                f"environment variable {self.api_key_env} (qa_generation.api_key_env)"
            )
        served: list[str] | None = None
        if response.status_code == 200:
            try:
                served = [str(item["id"]) for item in response.json()["data"]]
            except (ValueError, KeyError, TypeError):
                served = None
        self._check_model(served)
        self.is_ollama = self._says_ollama()
        self._connected = True

    def _check_model(self, served: list[str] | None) -> None:
        if served is None:  # no model list: the server takes the name as given
            if self.model is None:
                raise TeacherError(
                    f"the teacher at {self.base_url} lists no models (GET /models) — name the "
                    "model with --teacher-model"
                )
            return
        names = ", ".join(served) or "none"
        if self.model is None:
            if len(served) == 1:
                self.model = served[0]
                return
            if not served:
                raise TeacherError(
                    f"the teacher at {self.base_url} serves no model — load one (LM Studio) or "
                    "pull one (ollama pull NAME), then run again"
                )
            raise TeacherError(
                f"the teacher at {self.base_url} serves several models ({names}) — pick one with "
                "--teacher-model"
            )
        if self.model not in served and f"{self.model}:latest" in served:
            self.model = f"{self.model}:latest"  # Ollama's default tag, as `ollama run` implies
        if self.model not in served:
            raise TeacherError(
                f"model '{self.model}' is unknown to the teacher at {self.base_url}; it serves: "
                f"{names} — pass one of them with --teacher-model"
            )

    def _says_ollama(self) -> bool:
        import httpx

        root = urlunsplit(urlsplit(self.base_url)._replace(path="/"))
        try:
            response = self._client.get(root, timeout=CONNECT_TIMEOUT)
        except httpx.TransportError:
            return False
        return response.status_code == 200 and "ollama" in response.text[:200].casefold()

    # -- requests -------------------------------------------------------------------------------

    def _body(
        self,
        messages: Messages,
        schema: dict[str, Any],
        form: str,
        temperature: float,
        max_tokens: int,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "temperature": temperature,
            "max_tokens": max_tokens,
            "stream": False,
        }
        if form == "json_schema":
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "reply", "schema": schema, "strict": True},
            }
        elif form == "json_object":
            body["response_format"] = {"type": "json_object", "schema": schema}
        elif form == "ollama":
            body["format"] = schema
        return body

    def _post(self, body: dict[str, Any], *, probing: bool = False) -> str:
        """The reply text, retrying what is worth retrying; RequestFailed when it fails for good.
        HTTP 429 and 5xx are retried; while `probing` a form, HTTP 500 is not (llama-cpp-python's
        server answers a form it does not take with 500), while 429, 502, 503 and 504 (a busy
        server, or one still loading its model) are, so they do not rule a form out."""
        import httpx

        last = "no attempt"
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(_backoff(attempt - 1))
            try:
                response = self._client.post(f"{self.base_url}/chat/completions", json=body)
            except httpx.TimeoutException as exc:
                last = f"no reply within the timeout ({type(exc).__name__})"
                continue
            except httpx.TransportError as exc:  # refused, reset, closed mid-reply
                last = (
                    f"cannot reach {self.base_url} ({first_line(str(exc)) or type(exc).__name__})"
                )
                if attempt == self.max_retries:
                    raise RequestFailed(last, unreachable=True) from None
                continue
            status = response.status_code
            if status != 200:
                last = f"HTTP {status}: {_error_message(response)}"
                transient = status in TRANSIENT_STATUSES or (status >= 500 and not probing)
                if not transient:
                    raise RequestFailed(last, status=status)
                continue
            try:
                content = response.json()["choices"][0]["message"]["content"]
            except (ValueError, KeyError, IndexError, TypeError):
                last = f"a reply without choices[0].message.content: {first_line(response.text)}"
                continue
            if not isinstance(content, str) or not content.strip():
                last = "an empty reply"
                continue
            return content
        raise RequestFailed(last)

    def complete(
        self, messages: Messages, schema: dict[str, Any], *, temperature: float, max_tokens: int
    ) -> str:
        self.connect()
        form = self.form or "prompt"
        return self._post(self._body(messages, schema, form, temperature, max_tokens))

    def choose_form(
        self,
        messages: Messages,
        schema: dict[str, Any],
        parses: Callable[[str], bool],
        *,
        temperature: float,
        max_tokens: int,
    ) -> str:
        """Probe the structured-output forms with this first request (see the module docstring);
        keep the first the server accepts and whose reply parses, else the first it accepts.
        Returns the reply in the chosen form; TeacherError when the server refuses every form."""
        self.connect()
        if self.form is not None:
            return self.complete(messages, schema, temperature=temperature, max_tokens=max_tokens)
        forms = [f for f in STRUCTURED_FORMS if f != "ollama" or self.is_ollama]
        accepted: tuple[str, str] | None = None
        for form in forms:
            body = self._body(messages, schema, form, temperature, max_tokens)
            try:
                reply = self._post(body, probing=form != "prompt")
            except RequestFailed as exc:
                if exc.unreachable:
                    raise self._unreachable(RuntimeError(exc.reason)) from None
                self.probe[form] = f"failed ({exc.reason})"
                continue
            if parses(reply):
                self.probe[form] = "accepted, reply parsed"
                self.form = form
                return reply
            self.probe[form] = "accepted, reply did not parse"
            accepted = accepted or (form, reply)
        if accepted is not None:
            self.form = accepted[0]
            return accepted[1]
        tried = "; ".join(f"{form}: {result}" for form, result in self.probe.items())
        raise TeacherError(
            f"the teacher at {self.base_url} failed the first request in every form ({tried}); "
            "stopped — check the server's log"
        )

    def close(self) -> None:
        self._client.close()


class InProcessTeacher(ABC):
    """A teacher run in this process: its structured-output form is fixed (a grammar, a prefill),
    so the first request of a run is asked like any other, with nothing to probe."""

    @abstractmethod
    def complete(
        self, messages: Messages, schema: dict[str, Any], *, temperature: float, max_tokens: int
    ) -> str: ...

    def choose_form(
        self,
        messages: Messages,
        schema: dict[str, Any],
        parses: Callable[[str], bool],
        *,
        temperature: float,
        max_tokens: int,
    ) -> str:
        return self.complete(messages, schema, temperature=temperature, max_tokens=max_tokens)


class GgufTeacher(InProcessTeacher):
    """A .gguf file run in this process by llama.cpp; replies held to the schema by a grammar."""

    max_concurrency: int | None = 1  # one llama.cpp context: one request at a time
    form: str | None = "grammar"

    def __init__(self, path: Path, *, context_size: int) -> None:
        from shared_utils.llama_cpp_runtime import import_llama_cpp

        self.path = path
        self._llama_cpp = import_llama_cpp(
            f"--teacher {path} runs the file in llama.cpp",
            "or serve the file (LM Studio, llama.cpp's server) and pass its URL",
        )
        try:
            self._llm = self._llama_cpp.Llama(
                model_path=str(path), n_ctx=context_size, verbose=False
            )
        except (ValueError, RuntimeError) as exc:
            raise ConfigurationError(
                f"--teacher {path}: llama.cpp cannot load it ({first_line(str(exc))}) — give a "
                "GGUF model file"
            ) from None
        self._grammars: dict[str, str] = {}
        self.probe = {"grammar": "in-process, always"}

    @property
    def description(self) -> str:
        return f"{self.path} (in-process, llama.cpp)"

    @property
    def identity(self) -> str:
        return f"gguf|{self.path.name}|{self.path.stat().st_size}"

    def complete(
        self, messages: Messages, schema: dict[str, Any], *, temperature: float, max_tokens: int
    ) -> str:
        from llama_cpp.llama_grammar import LlamaGrammar, json_schema_to_gbnf

        text = json.dumps(schema, sort_keys=True)
        if text not in self._grammars:
            self._grammars[text] = json_schema_to_gbnf(text)
        grammar = LlamaGrammar.from_string(self._grammars[text], verbose=False)
        try:
            reply = self._llm.create_chat_completion(
                messages=messages,
                temperature=temperature,
                max_tokens=max_tokens,
                grammar=grammar,
            )
        except ValueError as exc:  # e.g. the prompt does not fit the context
            raise RequestFailed(f"llama.cpp refused the request ({first_line(str(exc))})") from None
        content = reply["choices"][0]["message"]["content"] or ""
        if not content.strip():
            raise RequestFailed("an empty reply")
        return content

    def close(self) -> None:
        self._llm.close()


def open_teacher(
    spec: str,
    *,
    model: str | None,
    api_key_env: str,
    api_key: str | None,
    timeout: float,
    max_retries: int,
    form: str,
    concurrency: int,
    context_size: int,
    device: str,
) -> Teacher:
    """The teacher `spec` names: an http(s) URL, a .gguf file, a transformers model folder or a
    hub id in the Hugging Face cache (one-line errors otherwise)."""
    if spec.startswith(("http://", "https://")):
        return HttpTeacher(
            spec,
            model=model,
            api_key=api_key,
            api_key_env=api_key_env,
            timeout=timeout,
            max_retries=max_retries,
            form=None if form == "auto" else form,
            concurrency=concurrency,
        )
    path = Path(spec).expanduser()
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise ConfigurationError(
                f"--teacher {spec}: no such file — give an existing .gguf file"
            )
        return GgufTeacher(path, context_size=context_size)
    from document_processing.qa_generation import transformers_teacher

    folder = transformers_teacher.model_folder(spec)
    if folder is not None:
        return transformers_teacher.TransformersTeacher(
            spec, folder, device=device, batch_size=concurrency
        )
    raise ConfigurationError(
        f"--teacher {spec}: not a server URL, a .gguf file or a model — give the URL of an "
        f"OpenAI-compatible server ({USUAL_URLS}), a .gguf file, a transformers model folder "
        "(save_pretrained) or a hub id in the Hugging Face cache"
    )
