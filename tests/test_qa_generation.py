"""generate-qa without a model: the filters and parsers as pure functions, and the command against
small chat-completions servers written here, which answer like the real ones do (LM Studio takes
OpenAI's json_schema, llama-cpp-python's server refuses it with HTTP 500) and fail like real ones
fail (garbage, timeouts, HTTP 500, a server that dies mid-run, kill -9 of the run itself).

The real servers (llama-cpp-python's, with SmolLM2) are in test_qa_generation_real.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from document_processing.qa_generation import filters, prompts, teachers
from document_processing.qa_generation.outputs import split_documents
from tests.time_limits import alarm_after

ROOT = Path(__file__).resolve().parent.parent
TEST_SECONDS = 60  # every test here is stopped after this long


@pytest.fixture(autouse=True)
def time_limit() -> Iterator[None]:
    with alarm_after(TEST_SECONDS):
        yield


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(teachers, "BACKOFF_SECONDS", 0.01)


# --------------------------------------------------------------------------------------------------
# Chunk records, as `extract` writes them
# --------------------------------------------------------------------------------------------------

DOCUMENTS = {
    "harbour.md": (
        "Tarn Harbour Guide",
        [
            (
                ["Tarn Harbour Guide", "Arrival"],
                "The ferry from Quell reaches Tarn Harbour at nine in the morning. "
                "The crossing takes fifty minutes on calm days. "
                "Adult tickets cost twelve euros at the kiosk.",
            ),
            (
                ["Tarn Harbour Guide", "Food"],
                "The Copper Kettle serves fish soup every Friday. "
                "Its cook, Ansel Brigg, was born on the island.",
            ),
        ],
    ),
    "survey.pdf": (
        "Morrow River Survey",
        [
            (
                ["Morrow River Survey"],
                "The Morrow river carries thirty cubic metres a second in March. "
                "Otters were seen at four of the nine survey sites.",
            ),
        ],
    ),
    "coop.md": (
        "Beekeepers' Handbook",
        [
            (
                ["Beekeepers' Handbook", "Hives"],
                "Kestrel Field holds forty-two hives behind a hawthorn hedge. "
                "New swarms wait six weeks at the quarantine plot.",
            ),
        ],
    ),
}
SENTENCES = 9  # in DOCUMENTS: one request each with sentences_per_pair 1


def write_chunks(folder: Path, documents: dict[str, Any] = DOCUMENTS) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for source, (title, chunks) in documents.items():
        for index, (section_path, text) in enumerate(chunks):
            page = index + 1 if source.endswith(".pdf") else 0
            lines.append(
                {
                    "text": text,
                    "source": source,
                    "title": title,
                    "type": "pdf" if source.endswith(".pdf") else "markdown",
                    "chunk_id": f"{source}#{index}",
                    "metadata": {
                        "chunk_index": index,
                        "section_path": section_path,
                        "page_start": page,
                        "page_end": page,
                    },
                }
            )
    (folder / "train.jsonl").write_text(
        "".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8"
    )
    return folder


def write_config(path: Path, **settings: Any) -> Path:
    values = {
        "sentences_per_pair": 1,
        "request_timeout": 5.0,
        "max_retries": 1,
        **settings,
    }
    body = "\n".join(f"  {key}: {json.dumps(value)}" for key, value in values.items())
    path.write_text(f"qa_generation:\n{body}\n", encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------------------
# A chat-completions server written for the tests
# --------------------------------------------------------------------------------------------------


def passage_of(body: dict[str, Any]) -> str:
    return body["messages"][-1]["content"].split("Passage: ", 1)[1]


def good_reply(body: dict[str, Any]) -> str:
    """A good teacher's pair: a question naming the passage's subject, the passage as answer."""
    passage = passage_of(body)
    return json.dumps(
        {"question": f"What about {' '.join(passage.split()[:4])}?", "answer": passage}
    )


def is_judge(body: dict[str, Any]) -> bool:
    return "Rate from 1 to 5" in body["messages"][0]["content"]


class FakeServer:
    """An OpenAI-compatible server on 127.0.0.1: `reply(body)` gives the assistant's text, or
    (status, text) for an error; it records every chat request it gets."""

    def __init__(
        self,
        reply: Callable[[dict[str, Any]], Any] = good_reply,
        *,
        models: tuple[str, ...] = ("teacher-7b",),
        refuse_json_schema: bool = False,
        api_key: str | None = None,
        delay: float = 0.0,
        port: int = 0,
    ) -> None:
        self.reply = reply
        self.models = models
        self.refuse_json_schema = refuse_json_schema
        self.api_key = api_key
        self.delay = delay
        self.requests: list[dict[str, Any]] = []
        self.in_flight = 0
        self.most_in_flight = 0
        self.lock = threading.Lock()
        self.die_after: int | None = None  # chat replies before the server goes away
        self.hold_after: int | None = None  # replies given before the rest wait for `release`
        self.release = threading.Event()
        self.replies_started = 0
        self.dead = False
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self.httpd.daemon_threads = True
        # A client that gave up (a timeout) breaks the pipe mid-reply: not worth a traceback on
        # stderr, where the command's one-line errors are checked.
        self.httpd.handle_error = lambda request, client_address: None
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def chat_requests(self, judge: bool = False) -> list[dict[str, Any]]:
        return [body for body in self.requests if is_judge(body) == judge]

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, payload: Any) -> None:
                data = (payload if isinstance(payload, str) else json.dumps(payload)).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _authorised(self) -> bool:
                if server.api_key is None:
                    return True
                if self.headers.get("Authorization") == f"Bearer {server.api_key}":
                    return True
                self._send(401, {"error": {"message": "Invalid API key"}})
                return False

            def do_GET(self) -> None:
                if not self._authorised():
                    return
                if self.path == "/v1/models":
                    data = [{"id": name, "object": "model"} for name in server.models]
                    self._send(200, {"object": "list", "data": data})
                else:
                    self._send(404, {"error": "not found"})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if server.dead:  # gone: the connection drops without a reply
                    self.close_connection = True
                    return
                if not self._authorised():
                    return
                with server.lock:
                    server.requests.append(body)
                    server.in_flight += 1
                    server.most_in_flight = max(server.most_in_flight, server.in_flight)
                try:
                    self._answer(body)
                finally:
                    with server.lock:
                        server.in_flight -= 1

            def _answer(self, body: dict[str, Any]) -> None:
                form = (body.get("response_format") or {}).get("type")
                if server.refuse_json_schema and form == "json_schema":
                    self._send(
                        500,
                        {
                            "error": {
                                "message": "1 validation error:\n  Input should be 'text' or "
                                "'json_object'",
                                "type": "internal_server_error",
                            }
                        },
                    )
                    return
                if body.get("model") not in server.models:
                    self._send(
                        404, {"error": {"message": f"model '{body.get('model')}' not found"}}
                    )
                    return
                time.sleep(server.delay)
                with server.lock:
                    slot = server.replies_started
                    server.replies_started += 1
                if server.hold_after is not None and slot >= server.hold_after:
                    server.release.wait(timeout=60)
                reply = server.reply(body)
                status, text = reply if isinstance(reply, tuple) else (200, reply)
                if status != 200:
                    self._send(status, {"error": {"message": text}})
                    return
                message = {"role": "assistant", "content": text}
                self._send(200, {"object": "chat.completion", "choices": [{"message": message}]})
                answered = len([b for b in server.requests if not is_judge(b)])
                if server.die_after is not None and answered >= server.die_after:
                    server.dead = True

        return Handler


@contextlib.contextmanager
def fake_server(*args: Any, **kwargs: Any) -> Iterator[FakeServer]:
    server = FakeServer(*args, **kwargs)
    try:
        yield server
    finally:
        with contextlib.suppress(OSError):
            server.stop()


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), err
    return lines[0]


# --------------------------------------------------------------------------------------------------
# Pure functions
# --------------------------------------------------------------------------------------------------


def test_parse_pair_reads_json_in_fences_prose_and_lists_and_refuses_the_rest():
    assert prompts.parse_pair('{"question": "Q?", "answer": "A."}') == ("Q?", "A.")
    fenced = 'Here you go:\n```json\n{"Question": " When? ", "Answer": 1904}\n```'
    assert prompts.parse_pair(fenced) == ("When?", "1904")
    assert prompts.parse_pair('Sure! {"question": "Who?", "answer": "Ansel"} Hope it helps') == (
        "Who?",
        "Ansel",
    )
    assert prompts.parse_pair('[{"question": "Q?", "answer": "A"}]') == ("Q?", "A")
    for garbage in ["", "no json here", '{"question": "Q?"}', '{"question": "", "answer": "A"}']:
        assert prompts.parse_pair(garbage) is None
    assert prompts.parse_rating('{"rating": 4}') == 4
    assert prompts.parse_rating('{"rating": "2"}') == 2
    assert prompts.parse_rating('{"rating": 9}') is None


def test_windows_are_groups_of_sentences_spread_over_the_chunk():
    text = " ".join(f"Sentence {n} is here." for n in range(1, 8))
    windows = prompts.chunk_windows(text, 3)
    assert [w.text for w in windows] == [
        "Sentence 1 is here. Sentence 2 is here. Sentence 3 is here.",
        # a stray last sentence joins the window before it
        "Sentence 4 is here. Sentence 5 is here. Sentence 6 is here. Sentence 7 is here.",
    ]
    assert len(prompts.chunk_windows(text, 2)) == 4  # 2, 2, 2 and a last one of half a window
    singles = prompts.chunk_windows(text, 1)
    assert [w.index for w in prompts.pick_windows(singles, 3)] == [0, 2, 4]
    assert len(prompts.pick_windows(singles, 9)) == 7


def test_grounding_counts_content_words_found_in_the_chunk():
    chunk = "Kestrel Field holds forty-two hives behind a hawthorn hedge."
    assert filters.grounding("Forty-two hives.", chunk, "en") == 1.0
    assert filters.grounding("The hive behind the hedge", chunk, "en") == 1.0  # hive~hives
    assert filters.grounding("Twelve cows graze in Kestrel Field", chunk, "en") == pytest.approx(
        2 / 5
    )
    assert filters.grounding("the", chunk, "en") == 0.0
    track = "Its track is exactly 61 centimetres wide."
    assert filters.grounding("61cm", track, "en") == 1.0  # the number, its unit abbreviated
    assert filters.grounding("16cm", track, "en") == 0.0


def test_check_pair_rejects_copies_empty_questions_and_giveaways():
    chunk = "Kestrel Field holds forty-two hives behind a hawthorn hedge."
    check = lambda q, a: filters.check_pair(q, a, passage=chunk, chunk=chunk, language="en")  # noqa: E731
    assert check("How many hives does Kestrel Field hold?", "Forty-two.") is None
    assert check(chunk.rstrip(".") + "?", "Forty-two.") == "question_copies_passage"
    assert check("What is the answer to this question?", "Forty-two.") == "question_about_nothing"
    assert check("Does Kestrel Field hold forty-two hives?", "Forty-two hives") == (
        "answer_in_question"
    )
    assert check("", "x") == "empty"
    statement = "The course costs 40 pounds, and the price includes a veil."
    assert check(statement, "A veil is not included in the course.") == "not_a_question"


def test_duplicates_and_wrong_language():
    kept = [set(filters.words("How many hives does Kestrel Field hold?"))]
    assert filters.near_duplicate("How many hives does the Kestrel Field hold?", kept, 0.8)
    assert not filters.near_duplicate("Who planted the hawthorn hedge?", kept, 0.8)
    assert filters.question_key("How MANY hives?") == filters.question_key("how many hives")
    english = ("What is the name of the cook who was born on the island?", "It is Ansel Brigg.")
    assert filters.wrong_language(*english, "de")
    assert not filters.wrong_language(*english, "en")
    assert not filters.wrong_language(*english, None)


def test_splits_are_whole_documents_and_leave_training_data():
    sources = [f"doc{i}.md" for i in range(10)]
    splits = split_documents(sources, valid_ratio=0.2, test_ratio=0.1)
    assert sorted(splits.values()).count("test") == 1
    assert sorted(splits.values()).count("valid") == 2
    assert split_documents(sources, 0.2, 0.1) == splits  # stable
    assert set(split_documents(["a.md", "b.md"], 0.5, 0.5).values()) >= {"train"}
    assert set(split_documents(sources, 0.0, 0.0).values()) == {"train"}


def test_base_urls_are_normalised_to_the_api_root():
    assert teachers.normalise_base_url("http://localhost:1234") == "http://localhost:1234/v1"
    assert (
        teachers.normalise_base_url("http://localhost:11434/v1/chat/completions")
        == "http://localhost:11434/v1"
    )
    assert teachers.normalise_base_url("https://host/api/v1/") == "https://host/api/v1"


# --------------------------------------------------------------------------------------------------
# The command against servers written here
# --------------------------------------------------------------------------------------------------


def test_llama_cpp_style_server_falls_back_to_json_object_once_and_writes_pairs(tmp_path, run_main):
    data = write_chunks(tmp_path / "data")
    config = write_config(tmp_path / "qa.yaml")
    with fake_server(refuse_json_schema=True) as server:
        status, out, err = run_main(
            "generate-qa", data, tmp_path / "out", "--teacher", server.url, "--config", config,
            "--no-progress",
        )  # fmt: skip
    assert status == 0, err
    forms = [(b.get("response_format") or {}).get("type") for b in server.requests]
    assert forms.count("json_schema") == 1  # probed once, then never again
    assert forms.count("json_object") == SENTENCES
    report = json.loads((tmp_path / "out" / "qa" / "qa_report.json").read_text())
    assert report["teacher"]["structured_output"] == "json_object"
    assert report["teacher"]["probe"]["json_schema"].startswith("failed (HTTP 500")
    assert "structured output: json_object" in out
    assert report["filters"]["survivors"]["replies"] == SENTENCES
    pairs = read_jsonl(tmp_path / "out" / "qa" / "train.jsonl")
    assert len(pairs) == SENTENCES == report["pairs"]["train"]
    first = pairs[0]
    assert first["messages"][0]["role"] == "user" and first["messages"][1]["role"] == "assistant"
    survey = next(p for p in pairs if p["source"] == "survey.pdf")
    assert survey["page"] == 1 and survey["chunk_id"] == "survey.pdf#0"
    assert next(p for p in pairs if p["source"] == "harbour.md")["section"].endswith("Arrival")
    alpaca = read_jsonl(tmp_path / "out" / "qa" / "alpaca" / "train.jsonl")
    assert alpaca[0]["instruction"] == first["messages"][0]["content"]

    # What train-lora and evaluate read.
    from shared_utils.training_records import iter_normalized_records
    from training_methods.transfer_learning.evaluation.question_files import read_questions

    assert len(read_questions(tmp_path / "out" / "qa" / "train.jsonl")) == SENTENCES
    rows = list(iter_normalized_records(tmp_path / "out" / "qa" / "train.jsonl"))
    assert len(rows) == SENTENCES and rows[0]["messages"] == first["messages"]


def test_json_schema_server_gets_concurrent_requests_in_the_documents_language(tmp_path, run_main):
    documents = {
        **DOCUMENTS,
        "fähre.md": (
            "Fähre",
            [
                (
                    ["Fähre"],
                    "Die Fähre von Quell fährt jeden Morgen um neun Uhr in den Hafen ein, und "
                    "sie ist nicht sehr groß. Die Überfahrt dauert bei ruhiger See nur fünfzig "
                    "Minuten, aber bei Sturm ist es mehr.",
                )
            ],
        ),
    }
    data = write_chunks(tmp_path / "data", documents)
    config = write_config(tmp_path / "qa.yaml")

    def reply(body: dict[str, Any]) -> str:
        # Held until four requests are in flight (or 3 s passed): a client that sends them one
        # at a time never gets there.
        deadline = time.monotonic() + 3
        while len(server.requests) > 1 and server.in_flight < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        return good_reply(body)

    with fake_server(reply) as server:
        status, _, err = run_main(
            "generate-qa", data, tmp_path / "out", "--teacher", server.url, "--config", config,
            "--concurrency", "4", "--no-progress",
        )  # fmt: skip
    assert status == 0, err
    assert server.most_in_flight == 4
    forms = {(b.get("response_format") or {}).get("type") for b in server.requests}
    assert forms == {"json_schema"}
    systems = {passage_of(b): b["messages"][0]["content"] for b in server.requests}
    german = next(text for passage, text in systems.items() if "Fähre" in passage)
    assert "in German" in german
    assert "in English" in systems[next(p for p in systems if "Copper Kettle" in p)]


def test_garbage_replies_are_retried_then_counted_and_never_stop_the_run(tmp_path, run_main):
    def reply(body: dict[str, Any]) -> str:
        if "Otters" in passage_of(body) or "Copper Kettle" in passage_of(body):
            return "Sure! Here is a great question about the passage: what is it?"
        return good_reply(body)

    data = write_chunks(tmp_path / "data")
    config = write_config(tmp_path / "qa.yaml", max_retries=2, structured_output="json_object")
    with fake_server(reply) as server:
        status, out, err = run_main(
            "generate-qa", data, tmp_path / "out", "--teacher", server.url, "--config", config,
            "--no-progress",
        )  # fmt: skip
    assert status == 0, err
    assert len(server.requests) == SENTENCES + 2 * 2  # two garbage replies, each asked 3 times
    report = json.loads((tmp_path / "out" / "qa" / "qa_report.json").read_text())
    assert report["filters"]["survivors"]["replies"] == SENTENCES
    assert report["filters"]["survivors"]["parsed"] == SENTENCES - 2
    assert report["requests"]["unparseable_retried"] == 4
    assert f"{SENTENCES - 2} parsed" in out


def test_http_500_on_every_request_stops_after_a_bounded_number(tmp_path, run_main):
    data = write_chunks(tmp_path / "data")
    config = write_config(tmp_path / "qa.yaml", max_retries=1)
    with fake_server(lambda body: (500, "CUDA out of memory")) as server:
        status, out, err = run_main(
            "generate-qa", data, tmp_path / "out", "--teacher", server.url, "--config", config,
            "--no-progress",
        )  # fmt: skip
    assert status == 1
    line = one_line(err)
    assert server.url in line and "failed the first request in every form" in line
    assert "CUDA out of memory" in line
    assert len(server.requests) == 1 + 1 + 2  # json_schema, json_object, prompt with its retry


def test_a_server_still_loading_its_model_does_not_rule_out_a_form(tmp_path, run_main):
    """HTTP 503 on the first request (LM Studio or vLLM loading the model) is retried while the
    forms are probed: the run keeps json_schema, the form the server takes."""
    answered = {"count": 0}

    def reply(body: dict[str, Any]) -> Any:
        answered["count"] += 1
        return (503, "model is loading") if answered["count"] == 1 else good_reply(body)

    data = write_chunks(tmp_path / "data")
    config = write_config(tmp_path / "qa.yaml", max_retries=1)
    with fake_server(reply) as server:
        status, _, err = run_main(
            "generate-qa", data, tmp_path / "out", "--teacher", server.url, "--config", config,
            "--no-progress",
        )  # fmt: skip
    assert status == 0, err
    report = json.loads((tmp_path / "out" / "qa" / "qa_report.json").read_text())
    assert report["teacher"]["structured_output"] == "json_schema"
    assert report["teacher"]["probe"] == {"json_schema": "accepted, reply parsed"}


def test_empty_replies_to_every_request_stop_after_a_bounded_number(tmp_path, run_main):
    data = write_chunks(tmp_path / "data")
    config = write_config(
        tmp_path / "qa.yaml", structured_output="json_schema", max_retries=0,
        max_consecutive_failures=4,
    )  # fmt: skip
    with fake_server(lambda body: "") as server:
        status, _, err = run_main(
            "generate-qa", data, tmp_path / "out", "--teacher", server.url, "--config", config,
            "--no-progress",
        )  # fmt: skip
    assert status == 1
    assert "4 requests in a row failed (last: an empty reply)" in one_line(err)
    assert len(server.requests) == 4
    assert not (tmp_path / "out" / "qa" / "train.jsonl").exists()


def test_errors_in_a_row_after_the_first_replies_stop_the_run_and_keep_what_was_done(
    tmp_path, run_main
):
    answered = {"count": 0}

    def reply(body: dict[str, Any]) -> Any:
        answered["count"] += 1
        return good_reply(body) if answered["count"] <= 3 else (503, "model unloaded")

    data = write_chunks(tmp_path / "data")
    config = write_config(tmp_path / "qa.yaml", max_retries=0, max_consecutive_failures=3)
    with fake_server(reply) as server:
        status, _, err = run_main(
            "generate-qa", data, tmp_path / "out", "--teacher", server.url, "--config", config,
            "--no-progress",
        )  # fmt: skip
        assert status == 1
        line = one_line(err)
        assert "3 requests in a row failed (last: HTTP 503: model unloaded)" in line
        assert "after 3 replies" in line and "rerun" in line
        # The server recovers: the rerun asks only the 6 requests that failed or were not asked.
        answered["count"] = -100
        asked_before = len(server.requests)
        status, _, err = run_main(
            "generate-qa", data, tmp_path / "out", "--teacher", server.url, "--config", config,
            "--no-progress",
        )  # fmt: skip
    assert status == 0, err
    assert len(server.requests) - asked_before == SENTENCES - 3
    assert len(read_jsonl(tmp_path / "out" / "qa" / "train.jsonl")) == SENTENCES


def test_timeouts_are_retried_then_counted_and_the_rerun_asks_only_them(tmp_path, run_main):
    slow = {"on": True}

    def reply(body: dict[str, Any]) -> str:
        if slow["on"] and "Otters" in passage_of(body):
            time.sleep(1.5)
        return good_reply(body)

    data = write_chunks(tmp_path / "data")
    config = write_config(
        tmp_path / "qa.yaml", request_timeout=0.5, max_retries=1, structured_output="json_schema"
    )
    with fake_server(reply) as server:
        status, out, err = run_main(
            "generate-qa", data, tmp_path / "out", "--teacher", server.url, "--config", config,
            "--no-progress",
        )  # fmt: skip
        assert status == 3, err  # partial: one request failed, the rest was written
        assert "1 failed" in out
        report = json.loads((tmp_path / "out" / "qa" / "qa_report.json").read_text())
        assert report["requests"]["failed"] == 1
        assert "timeout" in next(iter(report["requests"]["failures"]))
        assert report["pairs"]["train"] == SENTENCES - 1
        slow["on"] = False
        asked_before = len(server.requests)
        status, _, err = run_main(
            "generate-qa", data, tmp_path / "out", "--teacher", server.url, "--config", config,
            "--no-progress",
        )  # fmt: skip
    assert status == 0, err
    assert len(server.requests) - asked_before == 1
    assert len(read_jsonl(tmp_path / "out" / "qa" / "train.jsonl")) == SENTENCES


def test_a_server_that_dies_mid_run_loses_nothing(tmp_path, run_main):
    data = write_chunks(tmp_path / "data")
    config = write_config(tmp_path / "qa.yaml", structured_output="json_schema")
    port = free_port()
    with fake_server(port=port) as server:
        server.die_after = 4
        status, _, err = run_main(
            "generate-qa", data, tmp_path / "out", "--teacher", server.url, "--config", config,
            "--no-progress",
        )  # fmt: skip
    assert status == 1
    line = one_line(err)
    assert "stopped answering" in line and "after 4 replies" in line
    assert not (tmp_path / "out" / "qa" / "train.jsonl").exists()
    with fake_server(port=port) as again:
        status, _, err = run_main(
            "generate-qa", data, tmp_path / "out", "--teacher", again.url, "--config", config,
            "--no-progress",
        )  # fmt: skip
    assert status == 0, err
    assert len(again.requests) == SENTENCES - 4
    assert len(read_jsonl(tmp_path / "out" / "qa" / "train.jsonl")) == SENTENCES


@pytest.mark.parametrize("signal_number", [signal.SIGKILL, signal.SIGINT], ids=["kill-9", "ctrl-c"])
def test_a_killed_or_interrupted_run_loses_no_finished_reply(tmp_path, run_main, signal_number):
    data = write_chunks(tmp_path / "data")
    config = write_config(tmp_path / "qa.yaml", structured_output="json_schema")
    cache = tmp_path / "out" / ".qa_cache" / "replies.jsonl"
    with fake_server() as server:
        server.hold_after = 3  # the run cannot finish before it is stopped, however slow the host
        process = subprocess.Popen(
            [sys.executable, str(ROOT / "main.py"), "generate-qa", str(data),
             str(tmp_path / "out"), "--teacher", server.url, "--config", str(config),
             "--no-progress"],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 40
            while time.monotonic() < deadline:
                if cache.exists() and cache.read_bytes().count(b"\n") >= 3:
                    break
                time.sleep(0.05)
            os.kill(process.pid, signal_number)
        finally:
            server.release.set()  # replies in flight may still finish and be kept
            returncode = process.wait(timeout=10)
        assert returncode == (130 if signal_number == signal.SIGINT else -signal.SIGKILL)
        cached = cache.read_bytes().count(b"\n")
        assert 3 <= cached < SENTENCES
        asked_before = len(server.requests)
        status, _, err = run_main(
            "generate-qa", data, tmp_path / "out", "--teacher", server.url, "--config", config,
            "--no-progress",
        )  # fmt: skip
    assert status == 0, err
    report = json.loads((tmp_path / "out" / "qa" / "qa_report.json").read_text())
    assert report["requests"]["from_cache"] == cached
    assert len(server.requests) - asked_before == SENTENCES - cached
    assert len(read_jsonl(tmp_path / "out" / "qa" / "train.jsonl")) == SENTENCES


def test_judge_drops_low_ratings_and_its_verdicts_are_cached(tmp_path, run_main):
    def reply(body: dict[str, Any]) -> str:
        if is_judge(body):
            low = "Otters" in body["messages"][1]["content"].split("Question:")[1]
            return json.dumps({"rating": 2 if low else 5})
        return good_reply(body)

    data = write_chunks(tmp_path / "data")
    config = write_config(tmp_path / "qa.yaml")
    argv = ["generate-qa", data, tmp_path / "out", "--config", config, "--judge", "--no-progress"]
    with fake_server(reply) as server:
        status, out, err = run_main(*argv, "--teacher", server.url)
        assert status == 0, err
        assert len(server.chat_requests(judge=True)) == SENTENCES
        assert "1 rated low by the judge" in out
        status, _, err = run_main(*argv, "--teacher", server.url)
    assert status == 0, err
    assert len(server.chat_requests(judge=True)) == SENTENCES  # the rerun asked nothing
    pairs = read_jsonl(tmp_path / "out" / "qa" / "train.jsonl")
    assert len(pairs) == SENTENCES - 1
    assert not any("Otters" in p["messages"][0]["content"] for p in pairs)


def test_splits_keep_each_documents_pairs_together(tmp_path, run_main):
    data = write_chunks(tmp_path / "data")
    config = write_config(tmp_path / "qa.yaml", valid_ratio=0.3, test_ratio=0.3)
    with fake_server() as server:
        status, _, err = run_main(
            "generate-qa", data, tmp_path / "out", "--teacher", server.url, "--config", config,
            "--no-progress",
        )  # fmt: skip
    assert status == 0, err
    sources = {}
    for split in ("train", "valid", "test"):
        records = read_jsonl(tmp_path / "out" / "qa" / f"{split}.jsonl")
        assert records, split
        sources[split] = {r["source"] for r in records}
    assert not (sources["train"] & sources["valid"] or sources["train"] & sources["test"])
    assert not sources["valid"] & sources["test"]


def test_api_key_comes_from_the_environment(tmp_path, run_main, monkeypatch):
    data = write_chunks(tmp_path / "data")
    config = write_config(tmp_path / "qa.yaml", api_key_env="QA_TEST_KEY")
    argv = ["generate-qa", data, tmp_path / "out", "--config", config, "--no-progress"]
    with fake_server(api_key="sk-test") as server:
        monkeypatch.delenv("QA_TEST_KEY", raising=False)
        status, _, err = run_main(*argv, "--teacher", server.url)
        assert status == 1
        assert "HTTP 401" in one_line(err) and "QA_TEST_KEY" in err
        monkeypatch.setenv("QA_TEST_KEY", "sk-test")
        status, _, err = run_main(*argv, "--teacher", server.url)
    assert status == 0, err
    assert "sk-test" not in (tmp_path / "out" / "qa" / "resolved_config.yaml").read_text()


# --------------------------------------------------------------------------------------------------
# Bad input: one line each
# --------------------------------------------------------------------------------------------------


def test_an_unreachable_server_is_one_line_naming_the_url_and_the_usual_ports(tmp_path, run_main):
    data = write_chunks(tmp_path / "data")
    url = f"http://127.0.0.1:{free_port()}/v1"
    status, _, err = run_main("generate-qa", data, tmp_path / "out", "--teacher", url)
    assert status == 1
    line = one_line(err)
    assert f"cannot reach the teacher at {url}" in line
    assert "http://localhost:1234/v1" in line and "http://localhost:11434/v1" in line


def test_model_names_the_server_does_not_serve(tmp_path, run_main):
    data = write_chunks(tmp_path / "data")
    with fake_server(models=("llama3.2:latest", "qwen2.5:7b")) as server:
        argv = ["generate-qa", data, tmp_path / "out", "--teacher", server.url]
        status, _, err = run_main(*argv, "--teacher-model", "mistral")
        assert status == 1
        line = one_line(err)
        assert "model 'mistral' is unknown" in line and "llama3.2:latest, qwen2.5:7b" in line
        status, _, err = run_main(*argv)
        assert status == 1
        assert "serves several models" in one_line(err) and "--teacher-model" in err
        status, _, err = run_main(*argv, "--teacher-model", "llama3.2", "--no-progress")
        assert status == 0, err  # Ollama's :latest is implied, as in `ollama run`


def test_data_dir_without_chunk_records(tmp_path, run_main):
    with fake_server() as server:
        argv = ["--teacher", server.url]
        empty = tmp_path / "empty"
        empty.mkdir()
        status, _, err = run_main("generate-qa", empty, tmp_path / "out", *argv)
        assert status == 1
        assert "no chunk records" in one_line(err) and "extract" in err
        chat = tmp_path / "chat"
        chat.mkdir()
        record = {"messages": [{"role": "user", "content": "Q"}]}
        (chat / "train.jsonl").write_text(json.dumps(record) + "\n")
        status, _, err = run_main("generate-qa", chat, tmp_path / "out", *argv)
        assert status == 1
        assert "not a chunk record" in one_line(err) and "chat/" in err
        status, _, err = run_main("generate-qa", tmp_path / "missing", tmp_path / "out", *argv)
        assert status == 2
        assert "no such folder" in one_line(err)
        assert server.requests == []


def test_teachers_that_are_neither_url_nor_gguf_and_bad_settings(tmp_path, run_main):
    data = write_chunks(tmp_path / "data")
    status, _, err = run_main(
        "generate-qa", data, tmp_path / "out", "--teacher", data / "train.jsonl"
    )
    assert status == 2
    assert "not a server URL, a .gguf file or a model" in one_line(err)
    status, _, err = run_main("generate-qa", data, tmp_path / "out", "--teacher", "no.gguf")
    assert status == 2 and "no such file" in one_line(err)
    status, _, err = run_main("generate-qa", data, tmp_path / "out")
    assert status == 2 and "needs a teacher" in one_line(err)
    config = write_config(tmp_path / "bad.yaml", min_grounding=1.5)
    status, _, err = run_main(
        "generate-qa", data, tmp_path / "out", "--teacher", "x.gguf", "--config", config
    )
    assert status == 2 and "qa_generation.min_grounding" in one_line(err)
    status, _, err = run_main("generate-qa", data, tmp_path / "out", "--pairs-per-chunk", "0")
    assert status == 2
