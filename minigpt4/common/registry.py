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


class Registry:
    mapping: dict[str, dict[str, Any]] = {
        "builder_name_mapping": {},
        "task_name_mapping": {},
        "processor_name_mapping": {},
        "model_name_mapping": {},
        "lr_scheduler_name_mapping": {},
        "runner_name_mapping": {},
        "state": {},
        "paths": {},
    }

    # kind -> (mapping key, base class that registered classes must subclass, or None)
    _KINDS = {
        "builder": ("builder_name_mapping", "minigpt4.datasets.builders.base_dataset_builder.BaseDatasetBuilder"),
        "task": ("task_name_mapping", "minigpt4.tasks.base_task.BaseTask"),
        "model": ("model_name_mapping", "torch.nn.Module"),
        "processor": ("processor_name_mapping", "minigpt4.processors.base_processor.BaseProcessor"),
        "lr_scheduler": ("lr_scheduler_name_mapping", None),
        "runner": ("runner_name_mapping", None),
    }

    @classmethod
    def _register(cls, kind: str, name: str) -> Callable[[type], type]:
        key, base = cls._KINDS[kind]

        def wrap(obj: type) -> type:
            if base is not None:
                _check_subclass(obj, base, kind)
            if name in cls.mapping[key]:
                raise KeyError(f"Name '{name}' already registered for {cls.mapping[key][name]}.")
            cls.mapping[key][name] = obj
            return obj

        return wrap

    @classmethod
    def _get(cls, kind: str, name: str) -> type:
        key, _ = cls._KINDS[kind]
        table = cls.mapping[key]
        if name not in table:
            known = ", ".join(sorted(table)) or "(none registered)"
            raise UnknownNameError(
                f"Unknown {kind} name {name!r}. Known {kind} names: {known}. "
                f"Check the spelling in your YAML or --options."
            )
        return table[name]

    # -- registration decorators (original names) -------------------------------------------
    @classmethod
    def register_builder(cls, name: str):
        return cls._register("builder", name)

    @classmethod
    def register_task(cls, name: str):
        return cls._register("task", name)

    @classmethod
    def register_model(cls, name: str):
        return cls._register("model", name)

    @classmethod
    def register_processor(cls, name: str):
        return cls._register("processor", name)

    @classmethod
    def register_lr_scheduler(cls, name: str):
        return cls._register("lr_scheduler", name)

    @classmethod
    def register_runner(cls, name: str):
        return cls._register("runner", name)

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

    # -- lookups -----------------------------------------------------------------------------
    @classmethod
    def get_builder_class(cls, name: str):
        return cls._get("builder", name)

    @classmethod
    def get_model_class(cls, name: str):
        return cls._get("model", name)

    @classmethod
    def get_task_class(cls, name: str):
        return cls._get("task", name)

    @classmethod
    def get_processor_class(cls, name: str):
        return cls._get("processor", name)

    @classmethod
    def get_lr_scheduler_class(cls, name: str):
        return cls._get("lr_scheduler", name)

    @classmethod
    def get_runner_class(cls, name: str):
        return cls._get("runner", name)

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


registry = Registry()
