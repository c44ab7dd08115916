"""The toolkit's one error hierarchy.

Library code raises these; the launcher (`main.py`) is the one place that turns them into a single
line on stderr and an exit status. Each message says what went wrong and, where possible, how to fix
it, naming the file, line or config key involved.
"""

from __future__ import annotations

# Exit statuses of every command (documented in main.py and the README).
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_PARTIAL = 3
EXIT_INTERRUPTED = 130


class LLMToolkitError(Exception):
    """Base class of every error the toolkit raises on purpose."""

    exit_code = EXIT_FAILURE


class ConfigurationError(LLMToolkitError):
    """A config file, config key or command-line value is wrong."""

    exit_code = EXIT_USAGE


class DocumentProcessingError(LLMToolkitError):
    """A document could not be read, parsed or converted."""


class DataValidationError(LLMToolkitError):
    """A data file or record does not have the expected shape."""


class TrainingError(LLMToolkitError):
    """Training could not start or could not go on."""


class SecurityError(LLMToolkitError):
    """Input was refused because it is unsafe (path escape, unsafe YAML tag, oversize input)."""
