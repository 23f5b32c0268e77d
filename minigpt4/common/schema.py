"""Typed configuration sections built from merged OmegaConf nodes.

A section is a dataclass: its fields and their defaults are the only place the defaults live.
:func:`build_section` checks a config node against it: unknown keys (with a suggestion), wrong
types (``init_lr: "fast"``), nested sections, and keys of the original that this package accepts but
does not read (one warning naming them). Every error names the key and the file that set it.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import types
import typing
from typing import Any, Callable, Iterable

from omegaconf import DictConfig, ListConfig, OmegaConf

from minigpt4.common.errors import ConfigError

logger = logging.getLogger(__name__)

Origin = Callable[[str], str]


def suggest(name: str, choices: Iterable[str]) -> str:
    """`` Did you mean 'x'?`` for the closest of ``choices``, or an empty string."""
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" Did you mean {close[0]!r}?" if close else ""


def _plain(value: Any) -> Any:
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


def _convert(value: Any, hint: Any, key: str, where: str) -> Any:
    """``value`` as type ``hint`` (int, float, bool, str, list, tuple, dict, Optional/Union, Literal)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, key, where)
            except ConfigError as err:
                errors.append(err)
        raise errors[0]
    if origin is typing.Literal:
        choices = typing.get_args(hint)
        if value not in choices:
            raise ConfigError(f"{key} (set in {where}) must be one of {', '.join(map(repr, choices))}; got {value!r}.")
        return value
    if hint is Any:
        return _plain(value)
    if origin in (list, tuple) or hint in (list, tuple):
        value = _plain(value)
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} (set in {where}) must be a list; got {value!r}.")
        args = typing.get_args(hint)
        if args and args[-1] is not Ellipsis and len(args) == 1:
            value = [_convert(v, args[0], f"{key}[{i}]", where) for i, v in enumerate(value)]
        return list(value) if (origin or hint) is list else tuple(value)
    if origin is dict or hint is dict:
        value = _plain(value)
        if not isinstance(value, dict):
            raise ConfigError(f"{key} (set in {where}) must be a mapping; got {value!r}.")
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise ConfigError(f"{key} (set in {where}) must be True or False; got {value!r}.")
    if hint in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{key} (set in {where}) must be a number; got {value!r}.")
        try:
            number = hint(value) if not isinstance(value, str) or hint is float else int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key} (set in {where}) must be {'an integer' if hint is int else 'a number'}; got {value!r}.") from None
        if hint is int and isinstance(value, float) and value != int(value):
            raise ConfigError(f"{key} (set in {where}) must be an integer; got {value!r}.")
        return number
    if hint is str:
        if isinstance(value, (DictConfig, ListConfig, dict, list)):
            raise ConfigError(f"{key} (set in {where}) must be a string; got {_plain(value)!r}.")
        return "" if value is None else str(value)
    return _plain(value)


def build_section(cls: type, node: Any, prefix: str, origin: Origin = lambda key: "the config",
                  ignored: Iterable[str] = ()) -> Any:
    """An instance of dataclass ``cls`` from ``node`` (a DictConfig, a dict or None).

    ``prefix`` is the dotted name of the section (``model``, ``run``) used in messages;
    ``ignored`` are keys of the original that are accepted with one warning."""
    node = node if node is not None else {}
    if not isinstance(node, (DictConfig, dict)):
        raise ConfigError(f"{prefix} (set in {origin(prefix)}) must be a mapping of keys; got {_plain(node)!r}.")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    ignored = set(ignored)
    values, seen_ignored = {}, []
    for name in node.keys():
        key = f"{prefix}.{name}"
        if name in ignored:
            seen_ignored.append(name)
            continue
        if name not in fields:
            raise ConfigError(
                f"Unknown key '{key}' (set in {origin(key)}).{suggest(str(name), fields)} "
                f"Remove it or use one of: {', '.join(sorted(fields))}."
            )
        value = node[name]
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            values[name] = build_section(hint, value, key, origin)
        else:
            values[name] = _convert(value, hint, key, origin(key))
    if seen_ignored:
        logger.warning("%s keys accepted for compatibility with the original but not read by this package: %s",
                       prefix, ", ".join(f"{prefix}.{n}" for n in sorted(seen_ignored)))
    return cls(**values)

