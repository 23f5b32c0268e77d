"""BLIP-2's first-stage model with its text branch, as ``blip2_pretrained_flant5xxl.pth`` holds it.

EVA ViT (the project's builder) -> ``ln_vision`` -> Q-Former (``transformers.Blip2QFormerModel``, query
*and* text paths: word/position embeddings, the text feed-forward layers) -> ``vision_proj`` /
``text_proj`` (contrastive embeddings, ITC) and ``itm_head`` (image-text matching, ITM). MiniGPT-4
uses only the query path and drops the rest (``minigpt4.models.qformer.convert_blip2_state_dict``);
this module keeps it, for the humour scorer.

Shapes for the released sizes: image (B, 3, 224, 224) -> ViT (B, 257, 1408) -> queries (B, 32, 768)
-> ``image_feats`` (B, 32, 256) unit vectors; caption ids (B, L) -> ``text_feat`` (B, 256) unit
vector ([CLS] -> ``text_proj``); ITM: queries and caption together, cross-attending to the image ->
query outputs (B, 32, 768) -> ``itm_head`` -> mean over queries -> (B, 2) logits (index 1 = match).
"""

from __future__ import annotations

import copy
import logging
import re
from pathlib import Path

import torch
from timm.layers import LayerNormFp32
from torch import nn
from torch.nn import functional as F
from transformers import BertTokenizer
from transformers.models.blip_2.modeling_blip_2 import (
    Blip2QFormerIntermediate,
    Blip2QFormerModel,
    Blip2QFormerOutput,
    Blip2TextEmbeddings,
)

from minigpt4.common.errors import CheckpointError, ConfigError
from minigpt4.models.checkpoint import strict_load
from minigpt4.models.config import QFormerConfig, VisionConfig
from minigpt4.models.eva_vit import build_eva_vit, load_eva_state, vit_features
from minigpt4.models.qformer import BLIP2_DROPPED, build_qformer, qformer_key_to_ours, read_blip2_checkpoint

logger = logging.getLogger(__name__)

BLIP2_EMBED_DIM = 256  # vision_proj / text_proj output width in every released BLIP-2
BERT_MAX_POSITIONS = 512
DEC_TOKEN = "[DEC]"  # LAVIS adds it as the BOS token of BLIP-2's text decoder: vocab 30522 -> 30523
BERT_SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]

# Of the keys MiniGPT-4 drops (``BLIP2_DROPPED``), the scorer keeps the text branch and the ITC/ITM
# heads; it drops the rest on purpose: the MLM head, the position-ids buffer (rebuilt), BLIP-2's
# language model and its projection, and the contrastive temperature (similarities are cosines).
SCORER_KEEPS = re.compile(r"^(Qformer\.bert\.embeddings\.(word|position)_embeddings\.|"
                          r"Qformer\.bert\.encoder\.layer\.\d+\.(intermediate|output)\.|(vision_proj|text_proj|itm_head)\.)")


def scorer_drops(key: str) -> bool:
    return any(pattern.search(key) for pattern, _ in BLIP2_DROPPED) and not SCORER_KEEPS.search(key)
_TEXT_EMBEDDINGS = "Qformer.bert.embeddings."
_TEXT_TABLES = ("word_embeddings.", "position_embeddings.")


# -- tokenizer ----------------------------------------------------------------------------------------
def load_bert_tokenizer(path: str, key: str = "model.bert_tokenizer") -> BertTokenizer:
    """BERT WordPiece from a local folder (``vocab.txt`` or ``tokenizer.json``), with ``[DEC]`` added
    as LAVIS adds it (a no-op when the folder already has it)."""
    folder = Path(str(path)).expanduser()
    if not str(path) or not folder.is_dir():
        raise ConfigError(
            f"{key} {str(path)!r} is not a folder. The scorer's text tokenizer is bert-base-uncased's WordPiece: "
            f"download it once (python -c \"from transformers import BertTokenizer; "
            f"BertTokenizer.from_pretrained('bert-base-uncased').save_pretrained('models/bert-base-uncased')\") "
            f"and set {key}=models/bert-base-uncased."
        )
    if not any((folder / name).is_file() for name in ("vocab.txt", "tokenizer.json")):
        raise ConfigError(f"{key} {str(folder)!r} holds neither vocab.txt nor tokenizer.json: it is not a BERT "
                          "tokenizer folder (see docs/HUMOUR.md, 'Weights').")
    tokenizer = BertTokenizer.from_pretrained(str(folder), truncation_side="right")
    tokenizer.add_special_tokens({"bos_token": DEC_TOKEN})
    return tokenizer


# A small English vocabulary for the generated tiny scorer (make_tiny): whole words for the captions
# the tests and the quickstart use, plus every letter and digit as a word start and a ``##`` piece, so
# any lowercase ASCII text tokenises without [UNK].
_TINY_WORDS = """
the a an and or but of to in on at for with from by as is are was were be been being it its this that
these those there here what when where who why how which not no yes so too very just only also all any
some more most much many one two three four five first last new old good bad big small little long
short high low up down out over under again then now never always still even back off away than like
i me my we our you your he him his she her they them their do does did done have has had make made
get got go goes went going gone come came see saw look looks looking know think want need feel tell
say said give take put keep let try use find work play run eat drink sleep sit stand wait talk call
day night today tomorrow morning week year time life world home house room bed door window car road
city water food coffee tea milk pizza cake bread cheese banana apple cat dog bird fish horse cow duck
rabbit monkey man woman boy girl baby friend mom dad boss teacher people face hand head eyes hat shirt
shoes phone laptop computer tv music game ball book money job office school party birthday wedding
monday friday weekend diet gym selfie meme joke funny laugh smile happy sad angry tired bored awkward
again finally actually literally basically totally seriously honestly pretending trying forgot
remember stop wants thinks says when's moon rocket astronaut space heated support beverage emotional
motivation ground touch understand third launches stays forgot cats thinks laptop table chair tree
grass sun rain snow sky cloud red blue green yellow black white orange pink purple brown grey
sandwich potato tomato taco burger noodle soup salad cookie donut pancake waffle pickle penguin
giraffe elephant llama sloth hamster parrot octopus dinosaur unicorn zombie ninja pirate wizard robot
alien chicken turtle frog bear lion tiger wolf fox owl goat sheep pig mouse snake spider
""".split()


def tiny_wordpiece_vocab() -> list[str]:
    """The WordPiece vocabulary of the tiny scorer (without ``[DEC]``), in id order."""
    pieces = BERT_SPECIAL + [f"[unused{i}]" for i in range(3)]
    pieces += list("abcdefghijklmnopqrstuvwxyz0123456789") + list(".,!?'\"-:;()&%$#@*/+=")
    pieces += [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz0123456789"]
    pieces += ["##s", "##ed", "##ing", "##ly", "##er", "##est", "##'s"]
    seen, vocab = set(), []
    for piece in pieces + _TINY_WORDS:
        if piece not in seen:
            seen.add(piece)
            vocab.append(piece)
    return vocab


def tiny_tokenizer_size() -> int:
    """Rows of the tiny word-embedding table: the vocabulary plus ``[DEC]``."""
    return len(tiny_wordpiece_vocab()) + 1


def write_bert_tokenizer(folder: str | Path) -> int:
    """Write the tiny WordPiece tokenizer (``vocab.txt`` + the tokenizer files, ``[DEC]`` added) into
    ``folder``; returns its size."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(tiny_wordpiece_vocab()) + "\n", encoding="utf-8")
    tokenizer = BertTokenizer.from_pretrained(str(folder))
    tokenizer.add_special_tokens({"bos_token": DEC_TOKEN})
    tokenizer.model_max_length = BERT_MAX_POSITIONS
    tokenizer.save_pretrained(str(folder))
    return len(tokenizer)


# -- the model ----------------------------------------------------------------------------------------
def add_text_branch(qformer: Blip2QFormerModel, vocab_size: int) -> Blip2TextEmbeddings:
    """Give a query-only Q-Former (``build_qformer``) BLIP-2's text feed-forward layers; return the word
    and position embeddings (``Blip2TextEmbeddings``, as ``Blip2ForImageTextRetrieval`` holds them)."""
    config = qformer.config
    config.use_qformer_text_input = True
    for layer in qformer.encoder.layer:
        layer.intermediate = Blip2QFormerIntermediate(config)
        layer.output = Blip2QFormerOutput(config)
    text_config = copy.deepcopy(config)
    text_config.vocab_size, text_config.pad_token_id = vocab_size, 0
    text_config.max_position_embeddings = BERT_MAX_POSITIONS
    return Blip2TextEmbeddings(text_config)


class Blip2TextImageEncoder(nn.Module):
    """The backbone of the scorer; ``with_vision=False`` builds no ViT (the caption-only scorer)."""

    def __init__(self, image_size: int, num_query_token: int, vit_arch: VisionConfig, qformer_arch: QFormerConfig,
                 vocab_size: int, with_vision: bool = True, embed_dim: int = BLIP2_EMBED_DIM):
        super().__init__()
        self.with_vision = with_vision
        if with_vision:
            self.visual_encoder = build_eva_vit(image_size, arch=vit_arch)
            self.ln_vision = LayerNormFp32(vit_arch.embed_dim, eps=1e-5)  # torch's default eps, unlike the ViT
        self.Qformer, self.query_tokens = build_qformer(num_query_token, vit_arch.embed_dim, qformer_arch)
        self.text_embeddings = add_text_branch(self.Qformer, vocab_size)
        hidden = qformer_arch.hidden_size
        self.vision_proj = nn.Linear(hidden, embed_dim)
        self.text_proj = nn.Linear(hidden, embed_dim)
        self.itm_head = nn.Linear(hidden, 2)

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised images -> ``ln_vision`` of every ViT token, (B, N, D_vit)."""
        return self.ln_vision(vit_features(self.visual_encoder, image))

    def image_feats(self, image_embeds: torch.Tensor) -> torch.Tensor:
        """ViT tokens -> the queries' contrastive embeddings, (B, Q, E) unit vectors."""
        queries = self.query_tokens.expand(image_embeds.shape[0], -1, -1)
        atts = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=image_embeds.device)
        out = self.Qformer(query_embeds=queries, encoder_hidden_states=image_embeds, encoder_attention_mask=atts)
        return F.normalize(self.vision_proj(out.last_hidden_state), dim=-1)

    def text_hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Caption ids -> the text-only Q-Former output, (B, L, H) (no queries, no image)."""
        embeds = self.text_embeddings(input_ids=input_ids)
        return self.Qformer(query_embeds=embeds, query_length=0, attention_mask=attention_mask).last_hidden_state

    def text_feat(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Caption ids -> the caption's contrastive embedding ([CLS] -> ``text_proj``), (B, E) unit vectors."""
        return F.normalize(self.text_proj(self.text_hidden(input_ids, attention_mask)[:, 0]), dim=-1)

    def itm_hidden(self, image_embeds: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The image-grounded text encoding: queries + caption tokens, the queries cross-attending to the
        image; returns the query outputs, (B, Q, H)."""
        queries = self.query_tokens.expand(image_embeds.shape[0], -1, -1)
        num_queries = queries.shape[1]
        query_atts = torch.ones(queries.shape[:-1], dtype=attention_mask.dtype, device=attention_mask.device)
        embeds = self.text_embeddings(input_ids=input_ids, query_embeds=queries)
        image_atts = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=image_embeds.device)
        out = self.Qformer(query_embeds=embeds, query_length=num_queries,
                           attention_mask=torch.cat([query_atts, attention_mask], dim=1),
                           encoder_hidden_states=image_embeds, encoder_attention_mask=image_atts)
        return out.last_hidden_state[:, :num_queries]

    def itm_logits(self, image_embeds, input_ids, attention_mask) -> torch.Tensor:
        """BLIP-2's ITM logits, (B, 2): ``itm_head`` on every query output, averaged over the queries."""
        return self.itm_head(self.itm_hidden(image_embeds, input_ids, attention_mask)).mean(dim=1)

    @staticmethod
    def itc_similarity(image_feats: torch.Tensor, text_feat: torch.Tensor) -> torch.Tensor:
        """Row-wise ITC similarity: the best query's cosine with the caption, (B,)."""
        return torch.einsum("bqe,be->bq", image_feats, text_feat).max(dim=1).values


# -- weights ------------------------------------------------------------------------------------------
def convert_blip2_text_state_dict(state_dict: dict, with_vision: bool = True) -> tuple[dict, dict, list[str]]:
    """Rename a LAVIS BLIP-2 state dict to :class:`Blip2TextImageEncoder` names.

    Returns ``(backbone_state, vit_state, dropped)``: ``visual_encoder.*`` keys (without the prefix) go
    to ``vit_state``; ``Qformer.bert.embeddings.{word,position}_embeddings`` become ``text_embeddings.*``;
    the rest of ``Qformer.*`` is renamed as for MiniGPT-4; heads, ``query_tokens`` and ``ln_vision`` keep
    their names. Without vision, ``ln_vision`` and ``visual_encoder`` are dropped too."""
    out, vit, dropped = {}, {}, []
    for key, value in state_dict.items():
        if scorer_drops(key):
            dropped.append(key)
        elif key.startswith("visual_encoder.") or key.startswith("ln_vision."):
            if not with_vision:
                dropped.append(key)
            elif key.startswith("visual_encoder."):
                vit[key[len("visual_encoder."):]] = value
            else:
                out[key] = value
        elif key.startswith(_TEXT_EMBEDDINGS) and key[len(_TEXT_EMBEDDINGS):].startswith(_TEXT_TABLES):
            out["text_embeddings." + key[len(_TEXT_EMBEDDINGS):]] = value
        else:
            out[qformer_key_to_ours(key)] = value
    return out, vit, dropped


def load_blip2_text_weights(encoder: Blip2TextImageEncoder, q_former_model: str) -> None:
    """The full BLIP-2 checkpoint (path or URL) into ``encoder``: every Q-Former tensor, text parts and
    heads included, must be there; ``visual_encoder.*`` keys, when present, go into the ViT too."""
    path, state = read_blip2_checkpoint(q_former_model)
    state, vit_state, dropped = convert_blip2_text_state_dict(state, encoder.with_vision)
    if vit_state:  # as the MiniGPT-4 loader: these replace what eva_vit_g.pth gave
        dropped += load_eva_state(encoder.visual_encoder, vit_state, f"vision weights in {path}", partial=True)[1]
    if "text_embeddings.word_embeddings.weight" not in state:
        raise CheckpointError(
            f"BLIP-2 checkpoint {path} (model.q_former_model) has no Q-Former text branch "
            "(Qformer.bert.embeddings.word_embeddings.weight): the scorer needs the full first-stage checkpoint, "
            "e.g. blip2_pretrained_flant5xxl.pth as released, not one with the text parts stripped."
        )
    rows = state["text_embeddings.word_embeddings.weight"].shape[0]
    table = encoder.text_embeddings.word_embeddings.weight.shape[0]
    if rows != table:
        raise CheckpointError(
            f"BLIP-2 checkpoint {path} has {rows} word embeddings but the tokenizer (model.bert_tokenizer) has "
            f"{table} tokens: use the BERT tokenizer the checkpoint was trained with (bert-base-uncased + [DEC])."
        )
    vision = ("visual_encoder.",)
    strict_load(encoder, state, f"BLIP-2 checkpoint {path} (model.q_former_model)",
                may_be_missing=lambda key: key.startswith(vision))
    logger.info("Loaded %d BLIP-2 tensors from %s (dropped on purpose: %d)", len(state), path, len(dropped))
