#!/usr/bin/env python3
"""LLM Complete Toolkit launcher: `python main.py <command> [options]`.

This file only builds the command line and dispatches; every command lives in its package and is
importable and testable in-process through `main([...])`. It is also the one error boundary: the
toolkit's errors become one line on stderr and a documented exit status, and so does any other
exception (a library's), as one line naming the command, the exception and the module it came
from; `--debug` prints the full traceback as well.

Exit statuses:
    0    success
    1    failure (nothing could be processed, or an error stopped the command)
    2    usage or configuration error
    3    partial success: some input files failed, the rest was written (extract)
    130  interrupted (Ctrl-C)
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
import traceback

from document_processing.cli import add_extract_command
from document_processing.qa_generation.cli import add_generate_qa_command
from shared_utils.errors import EXIT_FAILURE, EXIT_INTERRUPTED, LLMToolkitError
from training_methods.reinforcement_learning.cli import register_commands as register_rl_commands
from training_methods.transfer_learning.evaluation.cli import (
    register_commands as register_evaluation_commands,
)
from training_methods.transfer_learning.finetuning.cli import (
    add_create_samples_command,
)
from training_methods.transfer_learning.finetuning.cli import (
    register_commands as register_finetune_commands,
)
from training_methods.transfer_learning.serving.cli import (
    register_commands as register_serving_commands,
)


def _global_options(suppress_defaults: bool) -> argparse.ArgumentParser:
    """--config, --log-level and --debug, accepted before or after the command name."""
    default = argparse.SUPPRESS if suppress_defaults else None
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("global options")
    group.add_argument(
        "--config",
        metavar="FILE",
        default=default,
        help="YAML config, relative to the current folder (default: the shipped "
        "configs/default.yaml)",
    )
    group.add_argument(
        "--log-level",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        default=default,
        help="logging verbosity (default: common.log_level of the config)",
    )
    group.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS if suppress_defaults else False,
        help="show the full traceback of an error",
    )
    return parent


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="main.py",
        description="LLM Complete Toolkit: from a folder of documents to training data and "
        "fine-tuned models.",
        parents=[_global_options(suppress_defaults=False)],
        epilog="Exit statuses: 0 ok, 1 failed, 2 usage or config error, 3 some files failed "
        "(the rest was written), 130 interrupted.",
    )
    subparsers = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND")
    subparsers.required = True
    for register in (
        add_extract_command,
        add_create_samples_command,  # documents and the tiny model: wired on the training side
        add_generate_qa_command,
        register_finetune_commands,
        register_serving_commands,
        register_evaluation_commands,
        register_rl_commands,
    ):
        register(subparsers, _global_options(suppress_defaults=True))
    return parser


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level),
        format="%(levelname)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    # bitsandbytes warns on every CPU import that an optional kernel package is missing; its
    # pure-torch CPU path works without it, so the warning would only bury our one-line errors.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)


def _close_progress_bars() -> None:
    """Finish any progress bar still drawn on stderr, so that the error starts a line of its own."""
    tqdm_module = sys.modules.get("tqdm")
    bars = getattr(getattr(tqdm_module, "tqdm", None), "_instances", None) or ()
    for bar in list(bars):
        try:
            bar.close()
        except Exception:  # a half-torn-down bar must not replace the real error
            pass


def _raised_in(exc: BaseException) -> str:
    """The module of the innermost Python frame the exception passed through."""
    tb = exc.__traceback__
    if tb is None:
        return type(exc).__module__
    while tb.tb_next is not None:
        tb = tb.tb_next
    return str(tb.tb_frame.f_globals.get("__name__", type(exc).__module__))


def unexpected_error_line(command: str, exc: BaseException) -> str:
    """One line for an exception the toolkit did not raise on purpose: the command, the exception
    type, the module it came from, its first message line and what to try."""
    kind = type(exc)
    name = kind.__qualname__
    if kind.__module__ != "builtins":
        name = f"{kind.__module__}.{name}"
    try:
        lines = str(exc).strip().splitlines()
    except Exception:  # a broken __str__ must not hide the error itself
        lines = []
    message = lines[0].strip() if lines else ""
    if len(message) > 300:
        message = message[:297] + "..."
    detail = f": {message}" if message else ""
    return (
        f"error: {command} failed with {name} in {_raised_in(exc)}{detail} — rerun with --debug "
        "for the full traceback"
    )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2), already printed by argparse
        return int(exc.code or 0)
    debug = bool(getattr(args, "debug", False))
    try:
        from shared_utils.config import load_config

        config = load_config(args.config)
        level = args.log_level or config.common.log_level
        config.common.log_level = level
        _configure_logging(level)
        return int(args.handler(args, config))
    except LLMToolkitError as exc:
        _close_progress_bars()
        if debug:
            traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:  # disk full, a path that is not a folder, permissions, ...
        _close_progress_bars()
        if debug:
            traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        if debug:
            traceback.print_exc()
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # a library's error (or a bug): one line, not a bare traceback
        _close_progress_bars()
        if debug:
            traceback.print_exc()
        print(unexpected_error_line(args.command, exc), file=sys.stderr)
        return EXIT_FAILURE


def ignore_interrupts_while_exiting() -> None:
    """Once the command has finished, a Ctrl-C while Python shuts down (libraries' finalizers
    and atexit handlers, torch's among them) would print a traceback or kill the process before
    its output is flushed. Everything the command wrote is on disk by then: flush the output and
    let the shutdown finish, with the command's own exit status."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    signal.signal(signal.SIGINT, signal.SIG_IGN)


if __name__ == "__main__":
    status = main()
    ignore_interrupts_while_exiting()
    sys.exit(status)
