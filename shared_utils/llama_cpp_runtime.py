"""llama.cpp through llama-cpp-python, for the commands that run or quantise GGUF files: the import
with its one-line error, the AMX workaround every run needs on recent Intel CPUs, and llama.cpp's
log kept instead of printed."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from shared_utils.errors import ConfigurationError

LLAMA_CPP_INSTALL = "pip install llama-cpp-python"


def import_llama_cpp(needed_for: str, otherwise: str = "") -> Any:
    """llama-cpp-python, ready to run GGUF files on this CPU, or a one-line ConfigurationError:
    "`needed_for`, which needs llama-cpp-python (why) — how to install it, `otherwise`"."""
    try:
        import llama_cpp
    except (ImportError, OSError, RuntimeError) as exc:  # not installed, or its library won't load
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        alternative = f", {otherwise}" if otherwise else ""
        raise ConfigurationError(
            f"{needed_for}, which needs llama-cpp-python ({reason}) — "
            f"{LLAMA_CPP_INSTALL}{alternative}"
        ) from None
    avoid_llama_cpp_amx_crash()
    return llama_cpp


def avoid_llama_cpp_amx_crash() -> bool:
    """On CPUs with AMX (Sapphire Rapids and later), llama.cpp's AMX kernels crash on the first
    batch through quantised weights (a segfault in ggml_backend_amx_mul_mat, ggml-org/llama.cpp
    issue 20824; llama-cpp-python 0.3.36 here). There, make llama-cpp-python load models without
    the extra, repacking buffer types, as llama-cli's --no-repack does, and return True; elsewhere
    change nothing and return False. Process-wide and idempotent: for whoever runs GGUF files in
    this process (tests, benchmarks)."""
    import llama_cpp
    from llama_cpp import llama_cpp as bindings  # the module Llama() reads its defaults from

    if b"AMX_INT8 = 1" not in llama_cpp.llama_print_system_info():
        return False
    default = bindings.llama_model_default_params
    if getattr(default, "without_repacking", False):
        return True

    def without_repacking() -> Any:
        params = default()
        params.use_extra_bufts = False
        return params

    without_repacking.without_repacking = True  # type: ignore[attr-defined]
    bindings.llama_model_default_params = without_repacking
    return True


@contextlib.contextmanager
def llama_cpp_log() -> Iterator[list[str]]:
    """llama.cpp's log lines during the block, kept instead of printed (its quantiser logs every
    tensor); llama-cpp-python's own log callback is put back afterwards."""
    import ctypes

    import llama_cpp
    from llama_cpp import _logger  # the callback Llama(verbose=...) relies on

    lines: list[str] = []

    @llama_cpp.llama_log_callback
    def keep(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        line = text.decode("utf-8", "replace").strip()
        if line:
            lines.append(line)

    llama_cpp.llama_log_set(keep, ctypes.c_void_p(0))
    try:
        yield lines
    finally:
        llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))
