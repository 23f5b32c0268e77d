"""Layered YAML configuration, merged in the original order:

    model default YAML (chosen by ``model.arch`` + ``model.model_type``)
      < user YAML ``model:``;  dataset default YAML < user ``datasets.<name>:``;  user ``run:``
      < ``--options key=value`` (highest)

Unlike the original, the configuration is validated when it is built: a misspelled section, an
unknown ``model`` key, an unknown ``arch``/``model_type``/builder name, or a weight path that is
still a placeholder or does not exist raises :class:`ConfigError` naming the key, the file that set
it and the fix.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

from omegaconf import DictConfig, OmegaConf

from minigpt4.common.errors import ConfigError
from minigpt4.common.paths import PROJECT_ROOT, is_url
from minigpt4.common.registry import registry
from minigpt4.common.schema import suggest
from minigpt4.constants import PLACEHOLDER_PREFIX

SECTIONS = ("model", "datasets", "run", "inference", "preprocess")


def _bad_option(item: str) -> ConfigError:
    return ConfigError(
        f"--options item {item!r} is not key=value: write each override as key=value "
        "(e.g. --options model.ckpt=/data/checkpoint_29.pth run.init_lr=1e-4)."
    )


def parse_options(options: list[str] | None) -> list[str]:
    """``--options`` as a dot-list. Every item is ``key=value`` (``a.b=1 c.d=x``); the original's
    alternating form (``a.b 1 c.d x``, no ``=`` anywhere, an even count) is accepted too. Anything
    else (a key without a value, mixed forms, ``a.b==2``) is an error naming the item."""
    options = [str(item) for item in options or []]
    if options and not any("=" in item for item in options):
        if len(options) % 2:
            raise _bad_option(options[-1] if len(options) == 1 else " ".join(options))
        options = [f"{k}={v}" for k, v in zip(options[::2], options[1::2])]
    items = []
    for item in options:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or value.startswith("=") or any(c.isspace() for c in key):
            raise _bad_option(item)
        items.append(f"{key.strip()}={value}")
    return items


def _flat_keys(node: Any, prefix: str = "") -> list[str]:
    if isinstance(node, DictConfig):
        keys = []
        for k in node.keys():
            keys += _flat_keys(node._get_node(k), f"{prefix}{k}.")
        return keys or [prefix[:-1]]
    return [prefix[:-1]]


def _known(lookup, key: str, cfg_path: str):
    """``lookup()``, with a registry or preset miss reported as a ConfigError naming ``key``."""
    try:
        return lookup()
    except KeyError as err:
        raise ConfigError(f"{key} in {cfg_path}: {err}") from None


class Config:
    """Build the merged configuration from ``args.cfg_path`` and ``args.options``."""

    def __init__(self, args, check_paths: bool = True):
        self.args = args
        self.origins: dict[str, str] = {}  # flattened key -> where it was last set
        registry.register("configuration", self)

        cfg_path = str(args.cfg_path)
        if not os.path.isfile(cfg_path):
            raise ConfigError(f"Config file {cfg_path!r} does not exist. Pass an existing YAML with --cfg-path.")
        user = OmegaConf.load(cfg_path)
        self._check_sections(user, cfg_path)
        options = OmegaConf.from_dotlist(parse_options(getattr(args, "options", None)))
        self._check_sections(options, "--options")

        runner_config = OmegaConf.create({"run": user.get("run") or {}, "inference": user.get("inference") or {}})
        self._note(runner_config, cfg_path)
        model_config = self.build_model_config(user, options, cfg_path)
        dataset_config = self.build_dataset_config(user, cfg_path)
        self._note(options, "--options")

        self.config = OmegaConf.merge(runner_config, model_config, dataset_config, options)
        self.model_class = registry.get_model_class(self.config.model.arch)
        # the typed model section: every key checked (name, type, allowed values), errors name the file
        self.model = self.model_class.config_class.from_node(self.config.model, self.origin)
        # the typed dataset sections, checked against their builders' keys
        self.datasets = {name: registry.get_builder_class(name).check_config(node, self.origin)
                         for name, node in self.datasets_cfg.items()}
        if check_paths:
            self.check_model_paths()

    # -- building --------------------------------------------------------------------------
    def _note(self, node: DictConfig, origin: str) -> None:
        for key in _flat_keys(node):
            self.origins[key] = origin

    @staticmethod
    def _check_sections(node: DictConfig, origin: str) -> None:
        for key in node.keys():
            if key not in SECTIONS:
                raise ConfigError(
                    f"Unknown top-level section {key!r} in {origin}.{suggest(key, SECTIONS)} "
                    f"Valid sections: {', '.join(SECTIONS)}."
                )

    @staticmethod
    def _model_key(model: DictConfig, options: DictConfig, key: str, cfg_path: str, known: str) -> str:
        value = options.get("model", {}).get(key) or model.get(key)
        if value is None:
            raise ConfigError(f"'model.{key}' is not set in {cfg_path}; known: {known}.")
        return value

    def build_model_config(self, user: DictConfig, options: DictConfig, cfg_path: str) -> DictConfig:
        model = user.get("model")
        if model is None:
            raise ConfigError(f"{cfg_path} has no 'model:' section (missing model configuration).")
        arch = self._model_key(model, options, "arch", cfg_path, ", ".join(registry.list_models()))
        model_cls = _known(lambda: registry.get_model_class(arch), "model.arch", cfg_path)
        # The original meant ``--options model.model_type=X`` to pick the default YAML but never
        # did (quirk 15); here the option does what it says.
        model_type = self._model_key(model, options, "model_type", cfg_path, ", ".join(model_cls.model_types()))
        default_path = _known(lambda: model_cls.default_config_path(model_type), "model.model_type", cfg_path)
        # only the model section of a preset YAML (``make_tiny:`` there describes the generated weights)
        defaults = OmegaConf.create({"model": OmegaConf.load(default_path).model})
        self._note(defaults, os.path.relpath(default_path, PROJECT_ROOT))
        user_model = OmegaConf.create({"model": model})
        self._note(user_model, cfg_path)
        return OmegaConf.merge(defaults, user_model)

    def build_dataset_config(self, user: DictConfig, cfg_path: str) -> DictConfig:
        datasets = user.get("datasets")
        merged = OmegaConf.create()
        if datasets is None:
            return merged
        for name in datasets:
            builder_cls = _known(lambda: registry.get_builder_class(name), f"datasets.{name}", cfg_path)
            dataset_type = datasets[name].get("type", "default")
            default_path = builder_cls.default_config_path(dataset_type)
            defaults = OmegaConf.load(default_path)
            self._note(defaults, os.path.relpath(default_path, PROJECT_ROOT))
            user_part = OmegaConf.create({"datasets": {name: datasets[name]}})
            self._note(user_part, cfg_path)
            merged = OmegaConf.merge(merged, defaults, user_part)
        return merged

    # -- validation --------------------------------------------------------------------------
    def origin(self, key: str) -> str:
        """Where a flattened key (``model.llama_model``) was last set; for a section key
        (``datasets.x.vis_processor``), where the last key inside it was set."""
        if key in self.origins:
            return self.origins[key]
        inside = [where for name, where in self.origins.items() if name.startswith(key + ".")]
        return inside[-1] if inside else "the package defaults"

    def check_model_paths(self) -> None:
        """Fail early when a weight path is still a placeholder or does not exist."""
        config_class = self.model_class.config_class
        hints = getattr(config_class, "PATH_HINTS", {})  # what a key points at, where its docs differ
        for key, url_ok in config_class.PATH_KEYS.items():
            value = getattr(self.model, key)
            if not value or (url_ok and is_url(value)):
                continue
            full = f"model.{key}"
            fix = f"set {full} in {self.origin(full)} or pass --options {full}=/your/path"
            see = f" ({hints[key]})" if key in hints else ". See README.md, 'Weights'"
            if str(value).startswith(PLACEHOLDER_PREFIX):
                raise ConfigError(f"{full} is still the placeholder {value!r} (from {self.origin(full)}): {fix}{see}.")
            if not os.path.exists(os.path.expanduser(str(value))):
                raise ConfigError(f"{full} = {value!r} (from {self.origin(full)}) does not exist: {fix}"
                                  f"{see if key in hints else ''}.")

    # -- accessors (original names) ---------------------------------------------------------
    @property
    def run_cfg(self) -> DictConfig:
        return self.config.run

    @property
    def datasets_cfg(self) -> DictConfig:
        return self.config.get("datasets", OmegaConf.create())

    @property
    def inference_vis_processor_cfg(self) -> DictConfig:
        """The image processor for inference (demo, captioning, scoring): ``inference.vis_processor``.

        Older eval configs (as the original's) set it at ``datasets.cc_sbu_align.vis_processor.train``;
        that still works, with a notice saying where the value was found."""
        node = self.config.get("inference", {}).get("vis_processor")
        if node is not None:
            return node
        legacy = self.datasets_cfg.get("cc_sbu_align", {}).get("vis_processor", {}).get("train")
        if legacy is not None:
            logging.getLogger(__name__).info(
                "Using the eval image processor at datasets.cc_sbu_align.vis_processor.train (%s); new configs "
                "name it inference.vis_processor.", self.origin("datasets.cc_sbu_align.vis_processor.train.name"))
            return legacy
        raise ConfigError(
            f"{self.args.cfg_path} names no inference image processor: add "
            "'inference: {vis_processor: {name: blip2_image_eval, image_size: 224}}'."
        )

    def require_run(self) -> DictConfig:
        """The ``run:`` section, which training configs must have."""
        if not self.config.get("run"):
            raise ConfigError(f"{self.args.cfg_path} has no 'run:' section; a training config needs one (see train_configs/).")
        return self.config.run

    @property
    def model_cfg(self) -> DictConfig:
        return self.config.model

    def get_config(self) -> DictConfig:
        return self.config

    def to_dict(self) -> dict:
        return OmegaConf.to_container(self.config)

    def pretty_print(self) -> None:
        log = logging.getLogger(__name__)
        log.info("\n=====  Running Parameters    =====")
        log.info(json.dumps(OmegaConf.to_container(self.config.run, resolve=True), indent=4, sort_keys=True))
        log.info("\n======  Dataset Attributes  ======")
        for name, node in self.datasets_cfg.items():
            log.info(f"\n======== {name} =======")
            log.info(json.dumps(OmegaConf.to_container(node, resolve=True), indent=4, sort_keys=True))
        log.info("\n======  Model Attributes  ======")
        log.info(json.dumps(OmegaConf.to_container(self.config.model, resolve=True), indent=4, sort_keys=True))
