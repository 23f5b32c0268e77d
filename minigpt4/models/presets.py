"""The named presets of a registered model (``model.model_type``): which default YAML each one is.

A model class lists them in ``PRETRAINED_MODEL_CONFIG_DICT`` (the original's name), paths relative to
the package; :class:`~minigpt4.common.config.Config` asks :meth:`default_config_path` for the YAML
merged under the user's ``model:`` section.
"""

from __future__ import annotations

from minigpt4.common.paths import PACKAGE_ROOT


class ModelPresets:
    PRETRAINED_MODEL_CONFIG_DICT: dict[str, str] = {}

    @classmethod
    def model_types(cls) -> list[str]:
        return sorted(cls.PRETRAINED_MODEL_CONFIG_DICT)

    @classmethod
    def default_config_path(cls, model_type: str) -> str:
        if model_type not in cls.PRETRAINED_MODEL_CONFIG_DICT:
            raise KeyError(f"Unknown model_type {model_type!r}; known model types: {', '.join(cls.model_types())}.")
        return str(PACKAGE_ROOT / cls.PRETRAINED_MODEL_CONFIG_DICT[model_type])
