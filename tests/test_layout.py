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


def _within(name: str, modules: set[str]) -> bool:
    """Whether the module `name` is one of `modules` or inside one of them."""
    return any(name == module or name.startswith(f"{module}.") for module in modules)


def test_transfer_learning_jobs_do_not_import_one_another() -> None:
    # finetuning, evaluation and serving import only themselves and the shared modules at
    # transfer_learning's top (model_loading, model_source, prompting, lora_model, merge,
    # tiny_model), which import no job: no job is a hub the others lean on.
    package = "training_methods/transfer_learning"
    root, prefix = REPO / package, package.replace("/", ".")
    jobs = ("evaluation", "finetuning", "serving")
    assert sorted(p.name for p in root.iterdir() if (p / "__init__.py").is_file()) == list(jobs)
    shared = {f"{prefix}.{p.stem}" for p in root.glob("*.py") if p.stem != "__init__"}
    for job in jobs:
        allowed = shared | {f"{prefix}.{job}"}
        stray = {
            module: {name for name in names if not _within(name, allowed)}
            for module, names in _importers(f"{package}/{job}", "training_methods").items()
        }
        assert {module: names for module, names in stray.items() if names} == {}
    job_packages = {f"{prefix}.{job}" for job in jobs}
    for path in sorted(root.glob("*.py")):
        assert not {name for name in _imports(path) if _within(name, job_packages)}, path.name
