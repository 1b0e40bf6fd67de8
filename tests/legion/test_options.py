"""Node options: ``--option KEY=VALUE`` parsing and its refusals."""

from __future__ import annotations

import pytest

from legion.errors import ConfigError
from legion.limits import NODE_OPTION_VALUE_CHARS_MAX, NODE_OPTIONS_MAX
from legion.options import parse_options, to_argv


def test_options_parse_into_a_mapping_and_a_value_may_hold_equals_signs():
    assert parse_options(["mapreduce.scheduler=tcp://127.0.0.1:8786", "x.query=a=b", "x.empty="]) == {
        "mapreduce.scheduler": "tcp://127.0.0.1:8786",
        "x.query": "a=b",
        "x.empty": "",
    }


def test_to_argv_round_trips_through_parse():
    options = {"b.y": "2=3", "a.x": "tcp://h:1"}
    argv = to_argv(options)
    assert argv[::2] == ["--option", "--option"]
    assert parse_options(argv[1::2]) == options


@pytest.mark.parametrize(
    "texts, message",
    [
        (["mapreduce.scheduler"], "--option must be KEY=VALUE"),
        (["=value"], "--option key ''"),
        (["bad key=1"], "--option key 'bad key'"),
        (["a.x=1", "a.x=2"], "--option a.x is given twice"),
        ([f"a.x={'v' * (NODE_OPTION_VALUE_CHARS_MAX + 1)}"], f"at most {NODE_OPTION_VALUE_CHARS_MAX} characters"),
        ([f"a.k{i}=v" for i in range(NODE_OPTIONS_MAX + 1)], f"at most {NODE_OPTIONS_MAX}"),
    ],
)
def test_a_bad_option_is_a_config_error_on_one_line_naming_the_problem(texts, message):
    with pytest.raises(ConfigError) as caught:
        parse_options(texts)
    assert message in caught.value.message and "\n" not in caught.value.message
