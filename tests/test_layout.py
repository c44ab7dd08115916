"""Which package may import which: the arrows between the toolkit's packages go one way."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _imports(path: Path) -> set[str]:
    """Every module `path` imports, at the top or inside a function."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _importers(package: str, target: str) -> dict[str, set[str]]:
    """{module of `package`: the modules of `target` it imports}, for those that import any."""
    arrows = {}
    for path in sorted((REPO / package).rglob("*.py")):
        hits = {name for name in _imports(path) if name.split(".")[0] == target}
        if hits:
            arrows[path.relative_to(REPO).as_posix()] = hits
    return arrows


def test_shared_utils_imports_neither_package() -> None:
    assert _importers("shared_utils", "document_processing") == {}
    assert _importers("shared_utils", "training_methods") == {}


def test_document_processing_does_not_import_training_methods() -> None:
    # What both sides need lives in shared_utils: the sample texts (sample_corpus), the words
    # answers and questions are compared by (word_tokens), the llama.cpp import
    # (llama_cpp_runtime). create-samples, which writes documents and the tiny model, is wired in
    # training_methods' finetuning/cli.py.
    assert _importers("document_processing", "training_methods") == {}


def test_tiny_model_does_not_need_document_processing() -> None:
    tiny_model = REPO / "training_methods" / "transfer_learning" / "tiny_model.py"
    assert not {name for name in _imports(tiny_model) if name.startswith("document_processing")}
