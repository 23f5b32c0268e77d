"""Tasks (REFERENCE 6.1, 5.6): build the datasets and the model named by the config, and compute
the training loss of one batch."""

from __future__ import annotations

from minigpt4.common.errors import ConfigError
from minigpt4.common.registry import registry


class BaseTask:
    # the validation number that picks ``checkpoint_best.pth``: (name, "max" | "min"), or None (no best)
    best_metric: tuple[str, str] | None = None

    @classmethod
    def setup_task(cls, cfg=None, **kwargs):
        return cls()

    def build_model(self, cfg, device="cpu"):
        model_cls = registry.get_model_class(cfg.model_cfg.arch)
        return model_cls.from_config(cfg.model_cfg, device=device)

    def build_datasets(self, cfg) -> dict:
        """``{dataset_name: {split: dataset}}`` in config order; each section is checked against its
        builder's keys first. Train datasets get ``name`` and, when configured, ``sample_ratio``."""
        datasets_cfg = cfg.datasets_cfg
        if len(datasets_cfg) == 0:
            raise ConfigError(f"{cfg.args.cfg_path} names no dataset: add a 'datasets:' section (see train_configs/).")
        datasets = {}
        for name in datasets_cfg:
            builder = registry.get_builder_class(name)(datasets_cfg[name], origin=cfg.origin)
            dataset = builder.build_datasets()
            dataset["train"].name = name
            if builder.settings.sample_ratio is not None:
                dataset["train"].sample_ratio = builder.settings.sample_ratio
            datasets[name] = dataset
        return datasets

    def train_step(self, model, samples: dict):
        """The loss of one batch; a task may return ``{"loss": loss, "log": {name: scalar tensor}}`` to
        have more numbers logged beside it."""
        return model(samples)["loss"]

    def validate(self, model, datasets: dict, splits: list[str], batch_size: int) -> dict:
        """Numbers on ``run.valid_splits`` after each epoch, e.g. ``{"val_loss": ...}``; none by default."""
        return {}
