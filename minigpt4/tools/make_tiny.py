"""Write a small random MiniGPT-4 in the original checkpoint formats, for tests and the quickstart.

    python -m minigpt4.tools.make_tiny --out DIR [--preset tiny|mid]

``DIR`` receives ``eva_vit_g.pth`` (the released EVA layout, one block more than the model builds,
like EVA-g's 40 -> 39), ``blip2_pretrained.pth`` (the LAVIS BLIP-2 layout, text-only parts and
``t5_proj`` included), ``llama/`` (a Hugging Face LLaMA folder with a SentencePiece tokenizer trained
here), ``minigpt4.pth`` (a MiniGPT-4 checkpoint: ``{"model": {llama_proj.*}}``) and ``config.yaml``
(the matching ``model:`` keys). Everything is derived from a fixed seed, so the output is the same
on every machine.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path

import sentencepiece as spm
import torch
from filelock import FileLock
from omegaconf import OmegaConf
from transformers import LlamaConfig, LlamaForCausalLM

from minigpt4.common.paths import PACKAGE_ROOT, cache_root
from minigpt4.constants import IMAGE_MESSAGE
from minigpt4.datasets.hic_format import read_split
from minigpt4.models.blip2_text import BERT_MAX_POSITIONS, BLIP2_EMBED_DIM, tiny_tokenizer_size, write_bert_tokenizer
from minigpt4.models.config import MiniGPT4Config, QFormerConfig, VisionConfig
from minigpt4.models.eva_vit import build_eva_vit
from minigpt4.models.qformer import build_qformer, qformer_key_to_original
from minigpt4.tools.memorise import EXAMPLES, memorise

PRESET_YAMLS = {"tiny": "minigpt4_tiny.yaml", "mid": "minigpt4_mid.yaml"}


def preset_spec(preset: str) -> dict:
    """The sizes of ``preset`` as its YAML (``minigpt4/configs/models/``) states them: the model's
    ``num_query_token``/``vit_config``/``qformer_config`` and the ``make_tiny:`` section's LLM sizes."""
    node = OmegaConf.load(PACKAGE_ROOT / "configs" / "models" / PRESET_YAMLS[preset])
    model = MiniGPT4Config.from_node(OmegaConf.masked_copy(node.model, ["num_query_token", "image_size",
                                                                       "vit_config", "qformer_config"]))
    return dict(
        image_size=model.image_size, num_query_token=model.num_query_token,
        vit=asdict(model.vit_config), qformer=asdict(model.qformer_config),
        llama=OmegaConf.to_container(node.make_tiny.llama), vocab_size=int(node.make_tiny.vocab_size),
        cross_attention_std=node.make_tiny.get("qformer_cross_attention_std"),
    )


SEED = 20230617
MEMORISED = "minigpt4_memorised.pth"  # the quickstart checkpoint (minigpt4/tools/memorise.py)
VERSION = 6  # bump when the output changes, so caches are rebuilt

# Text the tiny tokenizer is trained on: the prompts and separators it will see, plus humour.
_CORPUS = [
    "Give the following image: <Img>ImageContent</Img>. You will be able to see the image once I provide it to you. Please answer my questions.",
    f"###Human: {IMAGE_MESSAGE} Describe this image in a funny way. ###Assistant: ",
    f"###Human: {IMAGE_MESSAGE} Take a look at this image and tell a joke about it. ###Assistant: ",
    f"###Human: {IMAGE_MESSAGE} Please provide a humourous description of the picture. ###Assistant: ",
    f"###Human: {IMAGE_MESSAGE} Could you write a funny caption of this image for me? ###Assistant: ",
    "When your cat thinks the laptop is a heated bed.###",
    "Me pretending to understand the joke, again, for the third time today.###",
    "The astronaut forgot the milk, so now we are all going back to the moon.###",
    "This coffee is my emotional support beverage, do not touch it.###",
    "When the rocket launches but your motivation stays on the ground.###",
]


def tokenizer_corpus() -> list[str]:
    """``_CORPUS`` plus the captions of the bundled examples (``examples/filter_cap.json``), so the
    quickstart model's memorised captions are a few pieces a word, not a few bytes."""
    return _CORPUS + [f"{item.captions[0].caption}###" for item in read_split(EXAMPLES, "train")]


def _write_tokenizer(folder: Path, vocab_size: int) -> None:
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(tokenizer_corpus() * 20), model_writer=model, vocab_size=vocab_size, model_type="bpe",
        byte_fallback=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, add_dummy_prefix=True,
        remove_extra_whitespaces=False, normalization_rule_name="identity", split_digits=True,
        character_coverage=1.0, num_threads=1, minloglevel=2, hard_vocab_limit=False,
    )
    (folder / "tokenizer.model").write_bytes(model.getvalue())
    special = {name: {"content": text, "lstrip": False, "normalized": True, "rstrip": False, "single_word": False}
               for name, text in (("bos_token", "<s>"), ("eos_token", "</s>"), ("unk_token", "<unk>"))}
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
    config = {"add_bos_token": True, "add_eos_token": False, "clean_up_tokenization_spaces": False,
              "model_max_length": 2048, "pad_token": None, "sp_model_kwargs": {}, "tokenizer_class": "LlamaTokenizer",
              **{k: dict(v, __type="AddedToken") for k, v in special.items()}}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))


def _vit_state(preset: dict) -> dict:
    vit_arch = VisionConfig(**dict(preset["vit"], depth=preset["vit"]["depth"] + 1))  # one extra block, like EVA-g's 40th
    return build_eva_vit(preset["image_size"], arch=vit_arch).state_dict()


def _blip2_state(preset: dict) -> dict:
    qformer, query_tokens = build_qformer(preset["num_query_token"], preset["vit"]["embed_dim"], QFormerConfig(**preset["qformer"]))
    std = preset["cross_attention_std"]
    if std:  # wider cross-attention weights than BERT's 0.02, so the random Q-Former passes on the image
        with torch.no_grad():
            for name, param in qformer.named_parameters():
                if ".crossattention." in name and name.endswith(".weight") and param.dim() == 2:
                    param.mul_(std / 0.02)
    state = {f"Qformer.{k}": v for k, v in qformer.state_dict().items()}
    state = {qformer_key_to_original(k): v for k, v in state.items()}
    hidden, inter = preset["qformer"]["hidden_size"], preset["qformer"]["intermediate_size"]
    width = preset["vit"]["embed_dim"]
    # the parts MiniGPT-4 does not use, present in every released BLIP-2 checkpoint (the humour scorer
    # uses them): the text branch sized to the WordPiece vocabulary written beside it, and the heads.
    # Tensors beyond the first version's draw from their own generator, so the global stream -- and
    # every weight made after this one -- is as before.
    extra = torch.Generator().manual_seed(SEED + 1)
    vocab = tiny_tokenizer_size()
    for i in range(preset["qformer"]["num_hidden_layers"]):
        p = f"Qformer.bert.encoder.layer.{i}."
        state[p + "intermediate.dense.weight"] = torch.randn(inter, hidden) * 0.02
        state[p + "intermediate.dense.bias"] = torch.zeros(inter)
        state[p + "output.dense.weight"] = torch.randn(hidden, inter) * 0.02
        state[p + "output.dense.bias"] = torch.zeros(hidden)
        state[p + "output.LayerNorm.weight"] = torch.ones(hidden)
        state[p + "output.LayerNorm.bias"] = torch.zeros(hidden)
    for name, rows in (("word_embeddings", vocab), ("position_embeddings", BERT_MAX_POSITIONS)):
        first = torch.randn(64, hidden) * 0.02
        state[f"Qformer.bert.embeddings.{name}.weight"] = torch.cat([first, torch.randn(rows - 64, hidden, generator=extra) * 0.02])
    state["Qformer.bert.embeddings.position_ids"] = torch.arange(BERT_MAX_POSITIONS)[None]
    state["Qformer.cls.predictions.bias"] = torch.zeros(vocab)
    state["Qformer.cls.predictions.transform.dense.weight"] = torch.randn(hidden, hidden, generator=extra) * 0.02
    state["Qformer.cls.predictions.transform.dense.bias"] = torch.zeros(hidden)
    state["Qformer.cls.predictions.transform.LayerNorm.weight"] = torch.ones(hidden)
    state["Qformer.cls.predictions.transform.LayerNorm.bias"] = torch.zeros(hidden)
    state["Qformer.cls.predictions.decoder.weight"] = state["Qformer.bert.embeddings.word_embeddings.weight"].clone()
    state["Qformer.cls.predictions.decoder.bias"] = torch.zeros(vocab)
    state["t5_proj.weight"] = torch.randn(16, hidden) * 0.02
    state["t5_proj.bias"] = torch.zeros(16)
    for name, rows, std in (("vision_proj", BLIP2_EMBED_DIM, 0.02), ("text_proj", BLIP2_EMBED_DIM, 0.02),
                            ("itm_head", 2, 0.5)):  # a wide ITM head: match probabilities visibly vary
        state[f"{name}.weight"] = torch.randn(rows, hidden, generator=extra) * std
        state[f"{name}.bias"] = torch.randn(rows, generator=extra) * 0.02
    state["temp"] = torch.tensor(0.07)
    state["query_tokens"] = query_tokens.detach()
    state["ln_vision.weight"] = 1 + 0.1 * torch.randn(width)
    state["ln_vision.bias"] = 0.1 * torch.randn(width)
    return {"model": state}


def _write_llama(folder: Path, preset: dict) -> int:
    _write_tokenizer(folder, preset["vocab_size"])
    vocab = spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model")).get_piece_size()
    config = LlamaConfig(vocab_size=vocab, max_position_embeddings=2048, rms_norm_eps=1e-6, bos_token_id=1,
                         eos_token_id=2, pad_token_id=0, tie_word_embeddings=False, **preset["llama"])
    model = LlamaForCausalLM(config)
    model.save_pretrained(str(folder))
    return config.hidden_size


def make_tiny(out: str | Path, preset: str = "tiny") -> Path:
    """Write the weights of ``preset`` into ``out`` (created; files are written atomically)."""
    spec = preset_spec(preset)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        torch.manual_seed(SEED)
        torch.save(_vit_state(spec), tmp / "eva_vit_g.pth")
        torch.save(_blip2_state(spec), tmp / "blip2_pretrained.pth")
        write_bert_tokenizer(tmp / "bert_tokenizer")  # the scorer's WordPiece vocabulary, [DEC] added
        (tmp / "llama").mkdir()
        llm_width = _write_llama(tmp / "llama", spec)
        proj = torch.nn.Linear(spec["qformer"]["hidden_size"], llm_width)
        torch.save({"model": {"llama_proj.weight": proj.weight.detach(), "llama_proj.bias": proj.bias.detach()}},
                   tmp / "minigpt4.pth")
        # the files, for users who point a config at this folder (the sizes live in the preset YAML)
        config = {
            "vit_ckpt": str(out / "eva_vit_g.pth"), "q_former_model": str(out / "blip2_pretrained.pth"),
            "llama_model": str(out / "llama"), "ckpt": str(out / "minigpt4.pth"),
        }
        OmegaConf.save(OmegaConf.create({"model": config}), tmp / "config.yaml")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def ensure_tiny(preset: str = "tiny") -> Path:
    """The cached weights of ``preset`` (made on first use, under ``$MINIGPT4_CACHE``)."""
    out = cache_root() / f"{preset}-v{VERSION}"
    if not (out / "config.yaml").is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(out) + ".lock"):
            if not (out / "config.yaml").is_file():
                make_tiny(out, preset)
    return out


def ensure_memorised(preset: str = "tiny") -> Path:
    """The quickstart checkpoint of ``preset``: trained on the bundled examples (see
    :mod:`minigpt4.tools.memorise`), made on first use beside the generated weights."""
    folder = ensure_tiny(preset)
    out = folder / MEMORISED
    if not out.is_file():
        with FileLock(str(folder) + ".lock"):
            if not out.is_file():
                memorise(folder, preset_spec(preset), out)
    return out


def _tiny_weights(preset: str, name: str) -> str:
    """``${minigpt4_tiny:tiny,llama}`` in a YAML: a file of the generated small model, made on first use."""
    return str(ensure_memorised(preset) if name == MEMORISED else ensure_tiny(preset) / name)


if not OmegaConf.has_resolver("minigpt4_tiny"):
    # omegaconf 2.4 renamed register_new_resolver to register_resolver
    getattr(OmegaConf, "register_resolver", OmegaConf.register_new_resolver)("minigpt4_tiny", _tiny_weights)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output folder (replaced if it exists)")
    parser.add_argument("--preset", default="tiny", choices=sorted(PRESET_YAMLS))
    parser.add_argument("--memorise", action="store_true",
                        help=f"also train the quickstart checkpoint {MEMORISED} on the bundled examples")
    args = parser.parse_args(argv)
    out = make_tiny(args.out, args.preset)
    print(f"Wrote a {args.preset} MiniGPT-4 to {out}; its weight files are listed in {out / 'config.yaml'}.")
    if args.memorise:
        print(f"Wrote {memorise(out, preset_spec(args.preset), out / MEMORISED)} (memorised the bundled examples).")


if __name__ == "__main__":
    main()
