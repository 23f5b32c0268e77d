"""The project-wide registry: name -> class maps for models, dataset builders, processors,
tasks, runners and LR schedulers, plus named paths and a small state store.

The API is the one of the original (LAVIS-style) registry, with one change: an unknown name
raises a ``KeyError`` that lists the known names instead of returning ``None``.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable


class UnknownNameError(KeyError):
    """Raised when a registry lookup fails; the message lists what is registered."""

    def __str__(self) -> str:  # KeyError would repr() the message and add quotes
        return str(self.args[0])


def _check_subclass(cls: type, base_path: str, kind: str) -> None:
    module_name, base_name = base_path.rsplit(".", 1)
    base = getattr(importlib.import_module(module_name), base_name)
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise TypeError(f"A {kind} must subclass {base_path}; got {cls!r}.")


# kind -> the base class its registered classes must subclass (None: any class)
KINDS = {
    "builder": "minigpt4.datasets.builders.base_dataset_builder.BaseDatasetBuilder",
    "task": "minigpt4.tasks.base_task.BaseTask", "model": "torch.nn.Module",
    "processor": "minigpt4.processors.base_processor.BaseProcessor", "lr_scheduler": None, "runner": None,
}


def _registrar(kind: str):
    def register(cls, name: str) -> Callable[[type], type]:
        return cls._register(kind, name)

    register.__name__ = register.__qualname__ = f"register_{kind}"
    register.__doc__ = f"Class decorator: register a {kind} under ``name``."
    return classmethod(register)


def _lookup(kind: str):
    def get(cls, name: str) -> type:
        return cls._get(kind, name)

    get.__name__ = get.__qualname__ = f"get_{kind}_class"
    get.__doc__ = f"The {kind} registered as ``name``; an :class:`UnknownNameError` listing the known names otherwise."
    return classmethod(get)


class Registry:
    """The original's API: per kind (builder, task, model, processor, lr_scheduler, runner) a decorator
    ``register_<kind>(name)`` and a lookup ``get_<kind>_class(name)`` (added below from :data:`KINDS`);
    ``register_path`` / ``get_path``; ``register`` / ``get`` / ``unregister`` for the state."""

    mapping: dict[str, dict[str, Any]] = {**{f"{kind}_name_mapping": {} for kind in KINDS}, "state": {}, "paths": {}}

    @classmethod
    def _register(cls, kind: str, name: str) -> Callable[[type], type]:
        table, base = cls.mapping[f"{kind}_name_mapping"], KINDS[kind]

        def wrap(obj: type) -> type:
            if base is not None:
                _check_subclass(obj, base, kind)
            if name in table:
                raise KeyError(f"Name '{name}' already registered for {table[name]}.")
            table[name] = obj
            return obj

        return wrap

    @classmethod
    def _get(cls, kind: str, name: str) -> type:
        table = cls.mapping[f"{kind}_name_mapping"]
        if name not in table:
            known = ", ".join(sorted(table)) or "(none registered)"
            raise UnknownNameError(
                f"Unknown {kind} name {name!r}. Known {kind} names: {known}. "
                f"Check the spelling in your YAML or --options."
            )
        return table[name]

    @classmethod
    def register_path(cls, name: str, path: str) -> None:
        if not isinstance(path, str):
            raise TypeError(f"A registered path must be a str; got {type(path).__name__}.")
        if name in cls.mapping["paths"]:
            raise KeyError(f"Name '{name}' already registered.")
        cls.mapping["paths"][name] = path

    @classmethod
    def register(cls, name: str, obj: Any) -> None:
        """Store ``obj`` in the state under a dotted ``name`` (silently overwrites)."""
        path = name.split(".")
        current = cls.mapping["state"]
        for part in path[:-1]:
            current = current.setdefault(part, {})
        current[path[-1]] = obj

    @classmethod
    def list_models(cls):
        return sorted(cls.mapping["model_name_mapping"])

    @classmethod
    def get_path(cls, name: str):
        return cls.mapping["paths"].get(name)

    @classmethod
    def get(cls, name: str, default: Any = None, no_warning: bool = False):
        """Walk a dotted ``name`` through the state; ``default`` when absent."""
        value = cls.mapping["state"]
        for part in name.split("."):
            if not isinstance(value, dict) or part not in value:
                return default
            value = value[part]
        return value

    @classmethod
    def unregister(cls, name: str):
        return cls.mapping["state"].pop(name, None)


for _kind in KINDS:
    setattr(Registry, f"register_{_kind}", _registrar(_kind))
    setattr(Registry, f"get_{_kind}_class", _lookup(_kind))

registry = Registry()
