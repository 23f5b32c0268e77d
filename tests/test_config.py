"""Registry and layered configuration: the original's merge order, loud failures."""

from __future__ import annotations

import pytest

from conftest import ROOT, TINY_RANDOM_EVAL, make_config

TINY_EVAL = TINY_RANDOM_EVAL


def write(tmp_path, text, name="user.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_merge_order_default_user_options(tmp_path):
    user = write(tmp_path, """
model: {arch: mini_gpt4, model_type: tiny, max_txt_len: 64, image_size: 112}
datasets: {cc_sbu_align: {vis_processor: {train: {name: blip2_image_eval, image_size: 112}}}}
run: {task: image_text_pretrain, init_lr: 1e-4}
""")
    cfg = make_config(user, ["model.max_txt_len=16", "run.init_lr=3e-5"])
    model = cfg.model_cfg
    assert model.num_query_token == 8  # from the tiny default YAML
    assert model.image_size == 112  # user YAML over the default
    assert model.max_txt_len == 16  # --options over the user YAML
    assert cfg.run_cfg.init_lr == pytest.approx(3e-5) and isinstance(cfg.run_cfg.init_lr, float)
    assert cfg.model.vit_config.embed_dim == 64 and cfg.model.vit_config.patch_size == 14  # nested preset section
    assert cfg.model.freeze_vit is True and cfg.model.end_sym == "\n"  # typed defaults where nothing sets a key
    assert cfg.datasets_cfg.cc_sbu_align.build_info.storage == "/path/to/cc_sbu_align/"  # dataset default
    assert cfg.origin("model.max_txt_len") == "--options"
    assert cfg.origin("model.image_size") == str(user)
    assert cfg.origin("model.num_query_token").endswith("minigpt4_tiny.yaml")


def test_alternating_options_form(tmp_path):
    cfg = make_config(TINY_EVAL, ["model.max_txt_len", "12", "run.seed", "7"])
    assert cfg.model_cfg.max_txt_len == 12 and cfg.run_cfg.seed == 7


def test_model_type_option_selects_the_default_yaml():
    cfg = make_config(TINY_EVAL, ["model.model_type=pretrain_vicuna", "model.llama_model=/path/to/x"], check_paths=False)
    assert "vit_config" not in cfg.model_cfg  # nothing of the tiny preset is left
    # the released sizes: EVA ViT-g/14 with 39 of 40 blocks, bert-base Q-Former, 32 queries
    assert cfg.model.num_query_token == 32 and cfg.model.image_size == 224
    vit, qformer = cfg.model.vit_config, cfg.model.qformer_config
    assert (vit.embed_dim, vit.depth, vit.num_heads, vit.patch_size) == (1408, 39, 16, 14)
    assert (qformer.hidden_size, qformer.num_hidden_layers, qformer.intermediate_size) == (768, 12, 3072)


def test_misspelled_section_and_missing_run(tmp_path):
    from minigpt4.common.errors import ConfigError

    bad = write(tmp_path, "modle: {arch: mini_gpt4}\nrun: {task: image_text_pretrain}\n")
    with pytest.raises(ConfigError, match=r"'modle' in .*user\.yaml.*Did you mean 'model'"):
        make_config(bad)
    no_run = write(tmp_path, "model: {arch: mini_gpt4, model_type: tiny}\n", "norun.yaml")
    with pytest.raises(ConfigError, match="no 'run:' section"):
        make_config(no_run).require_run()
    with pytest.raises(ConfigError, match="is not key=value"):
        make_config(TINY_EVAL, ["model.max_txt_len", "12", "run.seed"])
    with pytest.raises(ConfigError, match="does not exist"):
        make_config(tmp_path / "missing.yaml")


def test_unknown_dataset_builder_lists_known_names(tmp_path):
    from minigpt4.common.errors import ConfigError

    bad = write(tmp_path, "model: {arch: mini_gpt4, model_type: tiny}\ndatasets: {cc_sbu_algin: {}}\nrun: {task: x}\n")
    with pytest.raises(ConfigError, match=r"Unknown builder name 'cc_sbu_algin'.*cc_sbu_align"):
        make_config(bad)


def test_registry_fails_loudly():
    import minigpt4  # noqa: F401
    from minigpt4.common.registry import registry

    with pytest.raises(KeyError, match=r"Unknown processor name 'blip2_image_tran'.*blip2_image_train"):
        registry.get_processor_class("blip2_image_tran")
    with pytest.raises(KeyError, match="already registered"):
        registry.register_processor("blip_caption")(registry.get_processor_class("blip_caption"))
    with pytest.raises(TypeError, match="must subclass"):
        registry.register_processor("not_a_processor")(dict)
    assert "mini_gpt4" in registry.list_models()
    assert registry.get_path("library_root").endswith("minigpt4")
    registry.register("a.b.c", 3)
    assert registry.get("a.b.c") == 3 and registry.get("a.x", default=5) == 5


def test_every_shipped_config_loads_into_the_typed_configs(tmp_path):
    """Each YAML in eval_configs/ and train_configs/ becomes typed sections (model, datasets and, for
    training configs, run) with no unknown key and no warning about ignored original keys; weight
    placeholders are the only complaint."""
    import dataclasses
    import logging

    from minigpt4.common.errors import ConfigError
    from minigpt4.runners.run_config import RunConfig, build_run_config

    configs = sorted((ROOT / "eval_configs").glob("*.yaml")) + sorted((ROOT / "train_configs").glob("*.yaml"))
    assert len(configs) >= 7
    for path in configs:
        records = []
        handler = logging.Handler()
        handler.emit = records.append
        logging.getLogger("minigpt4").addHandler(handler)
        try:
            cfg = make_config(path, check_paths=False)
            run = build_run_config(cfg) if path.parent.name == "train_configs" else None
        finally:
            logging.getLogger("minigpt4").removeHandler(handler)
        assert isinstance(cfg.model, cfg.model_class.config_class) and dataclasses.is_dataclass(cfg.model), path
        assert set(cfg.datasets) == set(cfg.datasets_cfg), path
        assert run is None or isinstance(run, RunConfig), path
        ignored = [r.getMessage() for r in records if "not read by this package" in r.getMessage()]
        assert not ignored, f"{path} sets keys the package ignores: {ignored}"
        try:
            make_config(path)
        except ConfigError as err:
            assert "placeholder" in str(err), f"{path}: {err}"
