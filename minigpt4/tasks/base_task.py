"""Tasks (REFERENCE 6.1, 5.6): build the datasets and the model named by the config, and compute
the training loss of one batch."""

from __future__ import annotations

import logging

from minigpt4.common.registry import registry

logger = logging.getLogger(__name__)


class BaseTask:
    @classmethod
    def setup_task(cls, cfg=None, **kwargs):
        return cls()

    def build_model(self, cfg, device=None):
        model_cls = registry.get_model_class(cfg.model_cfg.arch)
        return model_cls.from_config(cfg.model_cfg, device=device)

    def build_datasets(self, cfg) -> dict:
        """``{dataset_name: {split: dataset}}`` in config order; train datasets get ``name`` and, when
        configured, ``sample_ratio`` attributes."""
        datasets_cfg = cfg.datasets_cfg
        if len(datasets_cfg) == 0:
            raise ValueError("At least one dataset has to be specified (a 'datasets:' section in the YAML).")
        datasets = {}
        for name in datasets_cfg:
            dataset_config = datasets_cfg[name]
            builder = registry.get_builder_class(name)(dataset_config)
            dataset = builder.build_datasets()
            dataset["train"].name = name
            if "sample_ratio" in dataset_config:
                dataset["train"].sample_ratio = dataset_config.sample_ratio
            datasets[name] = dataset
        return datasets

    def train_step(self, model, samples: dict):
        return model(samples)["loss"]

    def evaluation(self, model, data_loader, cuda_enabled=True):
        raise NotImplementedError
