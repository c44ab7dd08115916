"""Text sanitisation applied wherever untrusted document text enters the toolkit.

Documents are data, never markup to render or code to run: script and style blocks, HTML comments
and tags are removed (their text content kept for ordinary tags), the text is NFKC-normalised,
control characters other than newline and tab are dropped, and overlong text is cut at a limit.
YAML from files (configs, Markdown frontmatter) is checked for aliases before it is loaded.
"""

from __future__ import annotations

import html
import re
import unicodedata

import yaml

_DANGEROUS_BLOCK = re.compile(
    r"<(script|style|iframe|object|embed|noscript|template)\b[^>]*>.*?</\1\s*>",
    re.IGNORECASE | re.DOTALL,
)
_UNCLOSED_DANGEROUS = re.compile(
    r"<(script|style|iframe|object|embed|noscript|template)\b[^>]*>.*\Z", re.IGNORECASE | re.DOTALL
)
_COMMENT = re.compile(r"<!--.*?(?:-->|\Z)", re.DOTALL)
_TAG = re.compile(r"</?[A-Za-z][A-Za-z0-9:-]*(?:\s+[^<>]*?)?/?>")
# C0 and C1 control characters except \t and \n; \r is normalised to \n before this runs.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_HTML_BREAK = re.compile(r"<br\s*/?>", re.IGNORECASE)


def strip_html(text: str) -> str:
    """Remove HTML: dangerous blocks with their content, comments, and tags (keeping their text)."""
    if "<" not in text:
        return text
    text = _DANGEROUS_BLOCK.sub("", text)
    text = _UNCLOSED_DANGEROUS.sub("", text)
    text = _COMMENT.sub("", text)
    text = _HTML_BREAK.sub("\n", text)
    text = _TAG.sub("", text)
    return html.unescape(text) if "&" in text else text


def remove_control_characters(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return _CONTROL.sub("", text)


def sanitize_text(text: str, max_length: int | None = None) -> tuple[str, bool]:
    """HTML removed, NFKC, control characters dropped, cut at `max_length`.

    Returns the text and whether it was cut, so the caller can report it.
    """
    text = remove_control_characters(unicodedata.normalize("NFKC", strip_html(text)))
    if max_length is not None and len(text) > max_length:
        return text[:max_length], True
    return text, False


def first_yaml_alias(source: str) -> yaml.AliasEvent | None:
    """The first alias (`*name`) in a YAML text, or None; raises `yaml.YAMLError` when the text
    is not YAML.

    Loading expands aliases, so a few hundred bytes of nested aliases become gigabytes (the
    "billion laughs"); callers refuse a text that has one, before loading it.
    """
    for event in yaml.parse(source, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.AliasEvent):
            return event
    return None
