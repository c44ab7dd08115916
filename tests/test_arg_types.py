"""The command line's numeric argument types: what each accepts and the one error wording."""

from __future__ import annotations

import argparse

import pytest

from shared_utils import arg_types


@pytest.mark.parametrize(
    ("convert", "text", "value"),
    [
        (arg_types.positive_int, "3", 3),
        (arg_types.non_negative_int, "0", 0),
        (arg_types.seed, "4294967295", 2**32 - 1),
        (arg_types.positive_float, "2e-4", 2e-4),
        (arg_types.non_negative_float, "0", 0.0),
        (arg_types.fraction, "0.25", 0.25),
        (arg_types.positive_float, "inf", float("inf")),  # refused by the config, in one line
    ],
)
def test_accepts(convert, text: str, value: float) -> None:
    assert convert(text) == value


@pytest.mark.parametrize(
    ("convert", "text", "message"),
    [
        (arg_types.positive_int, "0", "must be a positive integer, got '0'"),
        (arg_types.positive_int, "2.5", "must be a positive integer, got '2.5'"),
        (arg_types.non_negative_int, "-1", "must be an integer, 0 or more, got '-1'"),
        (arg_types.seed, "4294967296", "must be an integer in [0, 2**32 - 1], got '4294967296'"),
        (arg_types.non_negative_float, "nan", "must be a number, 0 or more, got 'nan'"),
        (arg_types.positive_float, "nan", "must be a positive number, got 'nan'"),
        (arg_types.non_negative_float, "-0.1", "must be a number, 0 or more, got '-0.1'"),
        (arg_types.fraction, "1", "must be a number in [0, 1), got '1'"),
    ],
)
def test_refuses_with_one_wording(convert, text: str, message: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError) as caught:
        convert(text)
    assert str(caught.value) == message


def test_comma_list_keeps_known_items_once_in_order() -> None:
    from shared_utils.arg_types import choice_list, comma_list

    assert comma_list(" F16, q8_0,f16 ", ("f16", "q8_0")) == ["f16", "q8_0"]
    parse = choice_list(("topic", "cloze"))
    assert parse("cloze,topic") == ["cloze", "topic"]
    for bad, named in (("topic,quiz", "quiz:"), (" , ", "' , ':")):
        with pytest.raises(argparse.ArgumentTypeError, match=named):
            parse(bad)
