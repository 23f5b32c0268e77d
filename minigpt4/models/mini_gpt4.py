"""MiniGPT-4: frozen EVA ViT-g + frozen BLIP-2 Q-Former -> trainable ``llama_proj`` -> frozen Vicuna.

Shapes for the released architecture (Vicuna-7B): image (B, 3, 224, 224) -> ViT (B, 257, 1408)
-> ``ln_vision`` -> Q-Former (B, 32, 768) -> ``llama_proj`` (B, 32, 4096) = 32 soft tokens.
"""

from __future__ import annotations

import contextlib
import logging
import random
from pathlib import Path

import torch
from timm.layers import LayerNormFp32
from torch import nn

from minigpt4.common.errors import CheckpointError, ConfigError
from minigpt4.common.paths import resolve_project_path
from minigpt4.common.registry import registry
from minigpt4.constants import IMAGE_PLACEHOLDER
from minigpt4.models.config import MiniGPT4Config
from minigpt4.models.checkpoint import load_weights_file, strict_load
from minigpt4.models.compiled import check_compile
from minigpt4.models.eva_vit import (build_eva_vit, cast_linear_conv_, load_eva_state, load_vit_weights, set_attention,
                                     vit_features)
from minigpt4.models.llm import OriginalDecoder, check_quantization, is_quantized, load_llm, load_tokenizer, quantization_bits
from minigpt4.models.lora import (apply_lora, check_adapters_match, checkpoint_key_map, is_adapter_key, merge_lora,
                                  saved_lora_config, to_checkpoint_names)
from minigpt4.models.losses import pc_loss
from minigpt4.models.precision import apply_storage_, resolve_attention, resolve_precision, summary, weight_dtype
from minigpt4.models.presets import ModelPresets
from minigpt4.models.qformer import (
    build_qformer,
    convert_blip2_state_dict,
    qformer_key_to_original,
    qformer_key_to_ours,
    read_blip2_checkpoint,
)

logger = logging.getLogger(__name__)

# Buffers the original saved in its checkpoints; they are recomputed here, so they are ignored on load.
IGNORED_CKPT_SUFFIXES = ("position_ids", "rotary_emb.inv_freq")
# What every MiniGPT-4 checkpoint must hold: the trained projection.
REQUIRED_CKPT_PREFIXES = ("llama_proj.",)


def _freeze(module: nn.Module) -> None:
    for p in module.parameters():
        p.requires_grad_(False)
    module.eval()


@registry.register_model("mini_gpt4")
class MiniGPT4(ModelPresets, nn.Module):
    PRETRAINED_MODEL_CONFIG_DICT = {
        "pretrain_vicuna": "configs/models/minigpt4.yaml",
        "pretrain_vicuna0": "configs/models/minigpt4.yaml",  # the later upstream name of the same preset
        "tiny": "configs/models/minigpt4_tiny.yaml",
        "mid": "configs/models/minigpt4_mid.yaml",
    }
    config_class = MiniGPT4Config

    def __init__(self, config: MiniGPT4Config, device="cpu", load_weights: bool = True):
        super().__init__()
        self.config = config
        device = torch.device(device)
        bits = quantization_bits(config.low_resource, config.quantization)
        check_quantization(bits, device)  # before any loading
        self.low_resource = config.low_resource
        # models/precision.py: the one precision policy (auto: the original's) and the attention kernels
        self.precision = resolve_precision(config.precision, device, config.vit_precision, config.llama_precision,
                                           quantized=bits is not None)
        self.attention = resolve_attention(config.attn_implementation, self.precision)
        check_compile(config.compile, device)
        self.compile_decoding = config.compile  # static KV cache + compiled decode step (models/compiled.py)
        self.vit_dtype, self.llm_dtype, self.autocast_dtype = self.precision.vit, self.precision.llm, self.precision.autocast
        self._frozen: list[nn.Module] = []  # parts that stay in eval mode under model.train()

        logger.info("Loading VIT")
        self.visual_encoder = build_eva_vit(config.image_size, config.drop_path_rate, config.use_grad_checkpoint,
                                            config.vit_config)
        set_attention(self.visual_encoder, self.attention.vit)
        if load_weights:  # False only for benchmarks of an architecture without its weights
            load_vit_weights(self.visual_encoder, config.vit_ckpt)
        # fp32 math, result in the input dtype; PyTorch's default eps 1e-5, unlike the ViT's 1e-6
        self.ln_vision = LayerNormFp32(self.visual_encoder.embed_dim, eps=1e-5)
        if self.vit_dtype != torch.float32:
            cast_linear_conv_(self.visual_encoder, self.vit_dtype)
        if config.freeze_vit:
            self._freeze_part(self.visual_encoder, self.ln_vision)
            logger.info("freeze vision encoder")

        logger.info("Loading Q-Former")
        self.Qformer, self.query_tokens = build_qformer(config.num_query_token, self.visual_encoder.embed_dim,
                                                        config.qformer_config, attn_implementation=self.attention.qformer)
        if load_weights:
            self._load_blip2(config.q_former_model)
        if config.freeze_qformer:
            self._freeze_part(self.Qformer)
            self.query_tokens.requires_grad_(False)
            logger.info("freeze Qformer")

        logger.info("Loading LLAMA")
        self.llama_tokenizer = load_tokenizer(config.llama_model)
        self.decode_ids = OriginalDecoder(self.llama_tokenizer)
        self.llama_model = load_llm(config.llama_model, self.llm_dtype, low_resource=self.low_resource,
                                    device_8bit=config.device_8bit, load_weights=load_weights, device=device,
                                    quantization=config.quantization, attn_implementation=self.attention.llm)
        for p in self.llama_model.parameters():  # frozen, but in train mode under model.train(), as the original
            p.requires_grad_(False)

        self.llama_proj = nn.Linear(self.Qformer.config.hidden_size, self.llama_model.config.hidden_size)
        if config.lora is not None:  # LoRA adapters on the LLM (models/lora.py), trained beside llama_proj
            self.llama_model = apply_lora(self.llama_model, config.lora, quantized=is_quantized(self.llama_model))
        self.max_txt_len = config.max_txt_len
        self.end_sym = config.end_sym
        self.prompt_list = self.load_prompts(config.prompt_path, config.prompt_template)
        apply_storage_(self)  # bf16/fp16/int8: the frozen parts stored in that dtype (models/precision.py)
        self.place(device)
        logger.info(summary(self, device))

    def _freeze_part(self, *modules: nn.Module) -> None:
        for module in modules:
            _freeze(module)
            self._frozen.append(module)

    def train(self, mode: bool = True) -> "MiniGPT4":
        """As ``nn.Module.train``, but the frozen ViT and Q-Former stay in eval mode (as the original's
        ``disabled_train``: no dropout there)."""
        super().train(mode)
        for module in self._frozen:
            module.eval()
        return self

    # -- loading ---------------------------------------------------------------------------------
    def _load_blip2(self, q_former_model: str) -> None:
        path, state = read_blip2_checkpoint(q_former_model)
        state, dropped = convert_blip2_state_dict(state)
        vit_state = {k[len("visual_encoder."):]: v for k, v in state.items() if k.startswith("visual_encoder.")}
        if vit_state:  # the original loads these into the ViT too (whole-model non-strict load)
            dropped += load_eva_state(self.visual_encoder, vit_state, f"vision weights in {path}", partial=True)[1]
        rest = {k: v for k, v in state.items() if not k.startswith("visual_encoder.")}
        holder = nn.Module()  # the parts a BLIP-2 checkpoint must fill completely
        holder.Qformer, holder.ln_vision = self.Qformer, self.ln_vision
        holder.query_tokens = self.query_tokens
        strict_load(holder, rest, f"BLIP-2 checkpoint {path}")
        logger.info("load checkpoint from %s: %d tensors (dropped on purpose: %d unused by MiniGPT-4)", path, len(rest), len(dropped))

    def checkpoint_may_miss(self, key: str) -> bool:
        """Which model keys a MiniGPT-4 checkpoint may leave out: the frozen parts it does not need to
        hold (they come from their own weight files), but never the projection it exists to carry."""
        return not key.startswith(REQUIRED_CKPT_PREFIXES) and not is_adapter_key(key)  # LoRA adapters: required

    def load_checkpoint(self, ckpt: str, fresh_adapters: bool = False) -> list[str]:
        """Load a MiniGPT-4 checkpoint (``{"model": ...}`` or a bare state dict, ``.pth`` or
        ``.safetensors``) in the original key layout. Every key must belong to the model and
        ``llama_proj.*`` must be there; buffers the original saved are ignored; frozen weights the
        file does not hold stay as they are. With ``model.lora`` its adapters must be there too (peft's
        names), unless ``fresh_adapters`` and the file holds none (training starts from a checkpoint
        without adapters). Returns the loaded keys in the checkpoint's layout."""
        path = Path(ckpt).expanduser()
        if not path.is_file():
            raise CheckpointError(f"model.ckpt {str(path)!r} does not exist; set model.ckpt to a MiniGPT-4 checkpoint file.")
        logger.info("Load BLIP2-LLM Checkpoint: %s", path)
        checkpoint = load_weights_file(path, "MiniGPT-4 checkpoint (model.ckpt)")
        state = checkpoint["model"] if isinstance(checkpoint.get("model"), dict) else checkpoint
        state = {k: v for k, v in state.items() if not k.endswith(IGNORED_CKPT_SUFFIXES)}
        what = f"MiniGPT-4 checkpoint {path} (model.ckpt)"
        fresh = not check_adapters_match(self, state, what, fresh_adapters, saved_lora_config(checkpoint))
        names = checkpoint_key_map(self)  # LoRA adapters: peft's names -> ours
        state = {names.get(k) or qformer_key_to_ours(k): v for k, v in state.items()}
        loaded = strict_load(self, state, what, lambda key: (fresh and is_adapter_key(key)) or self.checkpoint_may_miss(key))
        loaded = sorted(to_checkpoint_names(self, {qformer_key_to_original(k): None for k in loaded}))
        logger.info("Loaded %d tensors from %s: %s", len(loaded), path, ", ".join(loaded))
        return loaded

    @staticmethod
    def load_prompts(prompt_path: str, prompt_template: str) -> list[str]:
        if not prompt_path:
            return []
        path = resolve_project_path(prompt_path)
        if not path.is_file():
            raise ConfigError(f"model.prompt_path {prompt_path!r} does not exist (looked in the working directory and the project root).")
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if IMAGE_PLACEHOLDER in line]
        prompts = [prompt_template.format(line) for line in lines] if prompt_template else lines
        logger.info("Load %d training prompts", len(prompts))
        if prompts:
            logger.info("Prompt Example \n%s", random.choice(prompts))
        return prompts

    # -- placement and precision --------------------------------------------------------------------
    def place(self, device) -> "MiniGPT4":
        """Move the model to ``device``; in ``low_resource`` mode the ViT stays on the CPU in fp32 (as
        the original) and the 8-bit LLM stays where bitsandbytes put it."""
        device = torch.device(device)
        vit_device = torch.device("cpu") if self.low_resource else device
        self.visual_encoder.to(vit_device)
        self.ln_vision.to(vit_device)
        if self.low_resource:
            self.visual_encoder.float()
        self.Qformer.to(device)
        self.query_tokens.data = self.query_tokens.data.to(device)
        self.llama_proj.to(device)
        if not is_quantized(self.llama_model):
            self.llama_model.to(device)
        return self

    @property
    def device(self) -> torch.device:
        """Where the Q-Former, the projection and the inputs live."""
        return self.llama_proj.weight.device

    def maybe_autocast(self):
        # As the original: keyed on the vision encoder's device (CPU in low-resource mode -> no autocast).
        vit_device = self.visual_encoder.cls_token.device
        if vit_device.type == "cpu" or self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=vit_device.type, dtype=self.autocast_dtype)

    def _cast_in(self, x: torch.Tensor, part) -> torch.Tensor:  # bf16/fp16: x in the dtype of part's weights
        return x if self.precision.stored is None else x.to(weight_dtype(part))

    # -- the model ------------------------------------------------------------------------------------
    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        return self.llama_model.get_input_embeddings()(ids)

    def encode_img(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, H, W) normalised images -> (``inputs_llama`` (B, Q, D_llm), ``atts_llama`` (B, Q) ones)."""
        device = self.device
        image = self._cast_in(image.to(self.ln_vision.weight.device), self.visual_encoder)
        # frozen parts run without autograd (same values; nothing of theirs is kept for the backward)
        frozen_vit, frozen_both = self.config.freeze_vit, self.config.freeze_vit and self.config.freeze_qformer
        with self.maybe_autocast():
            with torch.no_grad() if frozen_vit else contextlib.nullcontext():
                image_embeds = self.ln_vision(vit_features(self.visual_encoder, image)).to(device)
            image_atts = (torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=device)  # SDPA: no mask at all
                          if self.attention.qformer == "eager" else None)
            query_tokens = self.query_tokens.expand(image_embeds.shape[0], -1, -1)
            with torch.no_grad() if frozen_both else contextlib.nullcontext():
                query_output = self.Qformer(
                    query_embeds=query_tokens, encoder_hidden_states=image_embeds, encoder_attention_mask=image_atts
                )
            inputs_llama = self.llama_proj(self._cast_in(query_output.last_hidden_state, self.llama_proj))
        inputs_llama = self._cast_in(inputs_llama, self.llama_model)
        atts_llama = torch.ones(inputs_llama.shape[:-1], dtype=torch.long, device=device)
        return inputs_llama, atts_llama

    def prompt_wrap(self, img_embeds, atts_img, prompt: str):
        """Splice image embeddings into ``prompt`` at the image placeholder (same prompt for the whole batch)."""
        if not prompt:
            return img_embeds, atts_img
        p_before, p_after = prompt.split(IMAGE_PLACEHOLDER)
        tok = self.llama_tokenizer
        ids_before = tok(p_before, return_tensors="pt", add_special_tokens=False).input_ids.to(img_embeds.device)
        ids_after = tok(p_after, return_tensors="pt", add_special_tokens=False).input_ids.to(img_embeds.device)
        batch = img_embeds.shape[0]
        before = self.embed_tokens(ids_before).expand(batch, -1, -1)
        after = self.embed_tokens(ids_after).expand(batch, -1, -1)
        wrapped = torch.cat([before.to(img_embeds.dtype), img_embeds, after.to(img_embeds.dtype)], dim=1)
        return wrapped, atts_img[:, :1].expand(-1, wrapped.shape[1])

    def build_training_inputs(self, samples: dict, prompt: str | None = None) -> dict:
        """The LLM inputs of one training batch: ``inputs_embeds``, ``attention_mask``, ``labels``;
        the prompt is drawn from the training prompts unless given (validation: no random draw).

        Layout per sample: [BOS | prompt before image | image tokens | prompt after | caption + end_sym
        | right padding]; labels are -100 everywhere but the caption tokens (pad = EOS is masked too).
        """
        img_embeds, atts_img = self.encode_img(samples["image"])
        if prompt is None and self.prompt_list:
            prompt = random.choice(self.prompt_list)
        if prompt:
            img_embeds, atts_img = self.prompt_wrap(img_embeds, atts_img, prompt)

        tok = self.llama_tokenizer
        texts = [t + self.end_sym for t in samples["text_input"]]
        to_regress = tok(
            texts, return_tensors="pt", padding="longest", padding_side="right", truncation=True,
            max_length=self.max_txt_len, add_special_tokens=False,
        ).to(img_embeds.device)
        text_targets = to_regress.input_ids.masked_fill(to_regress.input_ids == tok.pad_token_id, -100)
        batch = img_embeds.shape[0]
        prefix_targets = torch.full((batch, atts_img.shape[1] + 1), -100, dtype=torch.long, device=img_embeds.device)
        targets = torch.cat([prefix_targets, text_targets], dim=1)

        bos = torch.full((batch, 1), tok.bos_token_id, dtype=torch.long, device=img_embeds.device)
        bos_embeds = self.embed_tokens(bos)
        text_embeds = self.embed_tokens(to_regress.input_ids)
        inputs_embeds = torch.cat([bos_embeds.to(img_embeds.dtype), img_embeds, text_embeds.to(img_embeds.dtype)], dim=1)
        attention_mask = torch.cat([atts_img[:, :1], atts_img, to_regress.attention_mask], dim=1)
        return {"inputs_embeds": inputs_embeds, "attention_mask": attention_mask, "labels": targets}

    def forward(self, samples: dict) -> dict:
        inputs = self.build_training_inputs(samples)
        if self.config.loss == "pc":  # the HIC paper's position-conditioned loss (models/losses.py)
            labels = inputs.pop("labels")
            with self.maybe_autocast():
                logits = self.llama_model(**inputs, return_dict=True).logits
            return {"loss": pc_loss(logits, labels, self.config.pc_threshold, self.config.pc_scale)}
        with self.maybe_autocast():
            outputs = self.llama_model(**inputs, return_dict=True)
        return {"loss": outputs.loss}

    # -- construction from a config -----------------------------------------------------------------
    @classmethod
    def from_config(cls, cfg, device="cpu", fresh_adapters: bool = False) -> "MiniGPT4":
        """Build from a ``model`` config node (or a :class:`MiniGPT4Config`) on ``device``, then load
        ``model.ckpt`` when set (``fresh_adapters``: it may lack the LoRA adapters, for training) and
        merge the adapters with ``model.merge_lora``."""
        config = cfg if isinstance(cfg, MiniGPT4Config) else MiniGPT4Config.from_node(cfg)
        model = cls(config, device=device)
        if config.ckpt:
            model.load_checkpoint(config.ckpt, fresh_adapters=fresh_adapters)
        if config.merge_lora:
            merge_lora(model)
        return model

    @property
    def ddp_find_unused_parameters(self) -> bool:
        """Whether DDP must look for trainable parameters without a gradient (unfrozen ViT or Q-Former parts)."""
        return not (self.config.freeze_vit and self.config.freeze_qformer)

    def trainable_state_dict(self) -> dict:
        """The tensors a checkpoint holds: every parameter that requires grad, in the original key layout
        (LoRA adapters under peft's names)."""
        return to_checkpoint_names(self, {
            qformer_key_to_original(name): p.detach()
            for name, p in self.named_parameters()
            if p.requires_grad
        })
