"""Argument types of the command line: one converter per kind of number, one error wording, and
one parser of comma-separated choices.

Every numeric flag of every command uses one of these as its argparse `type`. A bad value raises
`argparse.ArgumentTypeError("must be <what>, got '<text>'")`; argparse puts the flag in front and
exits with status 2, so `extract --chunk-size abc` and `train-rl --num-envs abc` both print
`error: argument <flag>: must be a positive integer, got 'abc'`. (A plain `ValueError` would make
argparse print the converter's function name instead.)
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence

SEED_LIMIT = 2**32  # numpy's seeds are 32-bit


def _refuse(expected: str, text: str) -> argparse.ArgumentTypeError:
    return argparse.ArgumentTypeError(f"must be {expected}, got {text!r}")


def _integer(text: str, expected: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise _refuse(expected, text) from None


def _number(text: str, expected: str) -> float:
    """Infinity passes here: the config refuses it with a line that says a finite number is needed.
    NaN fails every range check below."""
    try:
        return float(text)
    except ValueError:
        raise _refuse(expected, text) from None


def positive_int(text: str) -> int:
    expected = "a positive integer"
    value = _integer(text, expected)
    if value <= 0:
        raise _refuse(expected, text)
    return value


def non_negative_int(text: str) -> int:
    expected = "an integer, 0 or more"
    value = _integer(text, expected)
    if value < 0:
        raise _refuse(expected, text)
    return value


def seed(text: str) -> int:
    expected = "an integer in [0, 2**32 - 1]"
    value = _integer(text, expected)
    if not 0 <= value < SEED_LIMIT:
        raise _refuse(expected, text)
    return value


def positive_float(text: str) -> float:
    expected = "a positive number"
    value = _number(text, expected)
    if not value > 0:  # also NaN
        raise _refuse(expected, text)
    return value


def non_negative_float(text: str) -> float:
    expected = "a number, 0 or more"
    value = _number(text, expected)
    if not value >= 0:  # also NaN
        raise _refuse(expected, text)
    return value


def fraction(text: str) -> float:
    """A share in [0, 1): 0 is none, 1 would leave nothing for the rest."""
    expected = "a number in [0, 1)"
    value = _number(text, expected)
    if not 0.0 <= value < 1.0:
        raise _refuse(expected, text)
    return value


def comma_list(text: str, choices: Sequence[str]) -> list[str]:
    """`"f16, Q8_0"` -> `["f16", "q8_0"]`: items stripped and lowercased, each once, in order.
    ArgumentTypeError naming the unknown items (or the empty text) and the choices."""
    items = list(dict.fromkeys(part.strip().lower() for part in text.split(",") if part.strip()))
    unknown = [item for item in items if item not in choices]
    if not items or unknown:
        raise argparse.ArgumentTypeError(
            f"{', '.join(unknown) or repr(text)}: use one or more of {', '.join(choices)}, "
            "comma-separated"
        )
    return items


def choice_list(choices: Sequence[str]) -> Callable[[str], list[str]]:
    """The argparse type of a flag that takes a comma-separated list of `choices`."""

    def parse(text: str) -> list[str]:
        return comma_list(text, choices)

    return parse
