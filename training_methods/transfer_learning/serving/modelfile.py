"""The Ollama Modelfile `export` writes next to a GGUF file: which file, the prompt format in
Ollama's Go template syntax and the stop strings.

Ollama renders prompts with Go templates, not Jinja, so the model's chat template is recognised
and written as the Go template of its family; a template of another family is left to the one
stored in the GGUF file.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from shared_utils.chat_templates import DEFAULT_CHAT_TEMPLATE
from shared_utils.file_utils import atomic_write_text

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

MODELFILE = "Modelfile"

# The formats of the families the GGUF export writes: ChatML (the tiny model, SmolLM2, Qwen),
# Llama 2's and Mistral's [INST], Phi-3's <|user|>/<|assistant|>/<|end|>, Gemma's
# <start_of_turn>/<end_of_turn>, and the toolkit's default for tokenizers without a template
# (shared_utils.chat_templates' DEFAULT_CHAT_TEMPLATE). Ollama writes the first BOS itself.
CHATML_GO_TEMPLATE = (
    "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}"
    "<|im_start|>assistant\n"
)
LLAMA2_GO_TEMPLATE = (  # a BOS before every [INST] but the first, a space before each answer
    '{{- range $i, $_ := .Messages }}{{ if eq .Role "user" }}{{ if $i }}<s>{{ end }}'
    '[INST] {{ .Content }} [/INST]{{ else if eq .Role "assistant" }} {{ .Content }} </s>'
    "{{ end }}{{ end }}"
)
MISTRAL_GO_TEMPLATE = (
    '{{- range .Messages }}{{ if eq .Role "user" }}[INST] {{ .Content }} [/INST]'
    '{{ else if eq .Role "assistant" }}{{ .Content }}</s>{{ end }}{{ end }}'
)
PHI3_GO_TEMPLATE = (
    "{{- range .Messages }}<|{{ .Role }}|>\n{{ .Content }}<|end|>\n{{ end }}<|assistant|>\n"
)
PHI4_GO_TEMPLATE = (  # Phi-4-mini: Phi-3's markers with no newline after them
    "{{- range .Messages }}<|{{ .Role }}|>{{ .Content }}<|end|>{{ end }}<|assistant|>"
)
GEMMA_GO_TEMPLATE = (  # Gemma has no system turn: a system message is sent as a user turn
    "{{- range .Messages }}<start_of_turn>"
    '{{ if eq .Role "assistant" }}model{{ else }}user{{ end }}\n{{ .Content }}<end_of_turn>\n'
    "{{ end }}<start_of_turn>model\n"
)
DEFAULT_GO_TEMPLATE = (
    '{{- range .Messages }}{{ if eq .Role "system" }}{{ .Content }}\n\n'
    '{{ else if eq .Role "user" }}### Instruction:\n{{ .Content }}\n\n'
    '{{ else if eq .Role "assistant" }}### Response:\n{{ .Content }}{EOS}\n\n'
    "{{ end }}{{ end }}### Response:\n"
)


def _renders_newline_after_role(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether the tokenizer's <|user|>-style template puts a newline after each role marker
    (Phi-3) or not (Phi-4-mini), found by rendering one user turn."""
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": "x"}], tokenize=False, add_generation_prompt=True
    )
    return "<|user|>\nx" in str(rendered)


def modelfile_text(gguf_name: str, tokenizer: PreTrainedTokenizerBase) -> str:
    """An Ollama Modelfile for the GGUF file `gguf_name` in the same folder."""
    from training_methods.transfer_learning.serving.gguf.tokenizer import chat_template_of

    template = chat_template_of(tokenizer)
    template_text = template if isinstance(template, str) else ""
    eos = tokenizer.eos_token
    lines = [
        "# Ollama: ollama create NAME -f Modelfile && ollama run NAME",
        f"FROM ./{gguf_name}",
    ]
    if "<|im_start|>" in template_text and "<|im_end|>" in template_text:
        lines.append(f'TEMPLATE """{CHATML_GO_TEMPLATE}"""')
        stops = ["<|im_end|>", eos]
    elif "<|assistant|>" in template_text and "<|end|>" in template_text:
        phi3 = _renders_newline_after_role(tokenizer)
        lines.append(f'TEMPLATE """{PHI3_GO_TEMPLATE if phi3 else PHI4_GO_TEMPLATE}"""')
        stops = ["<|end|>", eos]
    elif "<start_of_turn>" in template_text and "<end_of_turn>" in template_text:
        lines.append(f'TEMPLATE """{GEMMA_GO_TEMPLATE}"""')
        stops = ["<end_of_turn>", eos]
    elif "[INST]" in template_text and "[/INST]" in template_text:
        llama2 = "bos_token + '[INST]" in template_text.replace('"', "'")
        lines.append(f'TEMPLATE """{LLAMA2_GO_TEMPLATE if llama2 else MISTRAL_GO_TEMPLATE}"""')
        stops = [eos, "[INST]"]
    elif template_text == DEFAULT_CHAT_TEMPLATE:
        lines.append(f'TEMPLATE """{DEFAULT_GO_TEMPLATE.replace("{EOS}", eos or "")}"""')
        stops = [eos, "### Instruction:"]
    else:
        lines.append(
            "# No TEMPLATE: Ollama uses the chat template stored in the GGUF file when it knows "
            "it; otherwise write one in Go template syntax here."
        )
        stops = [eos]
    for stop in dict.fromkeys(s for s in stops if s):  # unique, in order
        lines.append(f"PARAMETER stop {_quote(stop)}")
    return "\n".join(lines) + "\n"


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_modelfile(model_dir: Path, gguf_path: Path) -> Path:
    """`Modelfile` next to `gguf_path`, for the tokenizer of `model_dir`; returns its path."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    path = gguf_path.parent / MODELFILE
    atomic_write_text(path, modelfile_text(gguf_path.name, tokenizer))
    return path
