"""Node options: ``KEY=VALUE`` settings an operator hands to every engine of a node.

Pure. ``legion node start --option mr.scheduler=tcp://10.0.0.5:8786``
(repeatable) gives each engine's ``start`` the options as
``NodeInfo.options``; ``legion cluster up --option …`` passes the same
options to every node it starts, plus those its local services yield (see
``legion.engine.LocalService``). The core gives them no meaning: by
convention an engine reads keys named ``<engine name>.<setting>``.

Keys are short names (letters, digits, ``_ . : -``); values are any text
without a NUL (they travel as command-line arguments). Limits are in
``legion.limits``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from legion.errors import ConfigError
from legion.limits import NODE_OPTION_KEY_CHARS_MAX, NODE_OPTION_VALUE_CHARS_MAX, NODE_OPTIONS_MAX

KEY_PATTERN = re.compile(rf"^[A-Za-z0-9][A-Za-z0-9_.:-]{{0,{NODE_OPTION_KEY_CHARS_MAX - 1}}}$")
FLAG = "--option"


def parse_option(text: str) -> tuple[str, str]:
    """``KEY=VALUE`` as a key and a value; ConfigError naming the problem if it is not."""
    key, separator, value = text.partition("=")
    if not separator:
        raise ConfigError(f"{FLAG} must be KEY=VALUE, e.g. {FLAG} mr.scheduler=tcp://127.0.0.1:8786; got {text!r}")
    check_option(key, value)
    return key, value


def parse_options(texts: Sequence[str]) -> dict[str, str]:
    """Every ``KEY=VALUE`` of a repeated ``--option``; ConfigError on a bad one or a key given twice."""
    options: dict[str, str] = {}
    for text in texts:
        key, value = parse_option(text)
        if key in options:
            raise ConfigError(f"{FLAG} {key} is given twice ({options[key]!r} and {value!r}); give it once")
        options[key] = value
    return check_options(options)


def check_option(key: str, value: str) -> None:
    if not isinstance(key, str) or not KEY_PATTERN.match(key):
        raise ConfigError(
            f"{FLAG} key {key!r} must be 1-{NODE_OPTION_KEY_CHARS_MAX} letters, digits, '_', '.', ':' or '-', "
            "starting with a letter or digit"
        )
    if not isinstance(value, str) or "\0" in value or len(value) > NODE_OPTION_VALUE_CHARS_MAX:
        raise ConfigError(f"{FLAG} {key}: the value must be text of at most {NODE_OPTION_VALUE_CHARS_MAX} characters")


def check_options(options: Mapping[str, str]) -> dict[str, str]:
    """``options`` as a plain dict, if every key and value is acceptable and they are few enough."""
    if len(options) > NODE_OPTIONS_MAX:
        raise ConfigError(f"at most {NODE_OPTIONS_MAX} {FLAG}s, got {len(options)}")
    for key, value in options.items():
        check_option(key, value)
    return dict(options)


def to_argv(options: Mapping[str, str]) -> list[str]:
    """The command-line arguments that pass ``options`` to ``legion node start``."""
    argv: list[str] = []
    for key, value in sorted(options.items()):
        argv += [FLAG, f"{key}={value}"]
    return argv
