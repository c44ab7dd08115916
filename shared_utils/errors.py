"""The toolkit's one error hierarchy.

Library code raises these; the launcher (`main.py`) is the one place that turns them into a single
line on stderr and an exit status. Each message says what went wrong and, where possible, how to fix
it, naming the file, line or config key involved.
"""

from __future__ import annotations


class LLMToolkitError(Exception):
    """Base class of every error the toolkit raises on purpose."""

    exit_code = 1


class ConfigurationError(LLMToolkitError):
    """A config file, config key or command-line value is wrong."""

    exit_code = 2


class DocumentProcessingError(LLMToolkitError):
    """A document could not be read, parsed or converted."""


class DataValidationError(LLMToolkitError):
    """A data file or record does not have the expected shape."""


class TrainingError(LLMToolkitError):
    """Training could not start or could not go on."""


class SecurityError(LLMToolkitError):
    """Input was refused because it is unsafe (path escape, unsafe YAML tag, oversize input)."""
