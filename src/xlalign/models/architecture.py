"""The parts of a model that capture hooks into: embedding, blocks, final norm.

How the adapter finds the parts
-------------------------------
Everything is looked up on ``model.base_model`` (``Qwen2ForCausalLM.model``,
``GPT2LMHeadModel.transformer``, a bare ``BertModel`` itself), because capture runs the base
model only: hidden states never need the LM head.

1. Known families (:data:`FAMILIES`, keyed by ``config.model_type``): Qwen2/Qwen3, Llama,
   Mistral, Mixtral, Gemma 1-3, Phi, GPT-2, GPT-J, GPT-NeoX, BERT, RoBERTa, XLM-R, OPT, Bloom,
   Falcon and a few more, each with the attribute paths of its parts.
2. Anything else (or a known family whose paths do not resolve), the generic search:
   the embedding is ``base.get_input_embeddings()``; the blocks are the shallowest
   ``nn.ModuleList`` holding ``config.num_hidden_layers`` modules of one class; the final norm
   is the first of ``norm``, ``ln_f``, ``final_layer_norm``, ``final_layernorm``, ``final_norm``,
   ``ln_final``, ``norm_f`` found on the base model (none: the ``final`` site is unavailable);
   additive positions are an ``nn.Embedding`` called ``wpe``, ``position_embeddings`` or
   ``embed_positions`` outside the blocks.

When a part cannot be found the error says which one and in what class it was looked for.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from xlalign.errors import XlalignError


@dataclass(frozen=True)
class FamilyPaths:
    """Attribute paths of one family's parts, relative to ``model.base_model``."""

    embedding: str
    blocks: str
    final_norm: str | None
    #: module that adds absolute position embeddings (GPT-2 ``wpe``, BERT
    #: ``embeddings.position_embeddings``); None for rotary/ALiBi models.
    positions: str | None = None


_DECODER = FamilyPaths("embed_tokens", "layers", "norm")
_BERT = FamilyPaths("embeddings", "encoder.layer", None, "embeddings.position_embeddings")

_DECODER_TYPES = (
    *("qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "llama", "mistral", "mixtral", "gemma"),
    *("gemma2", "gemma3_text", "olmo", "olmo2", "granite", "cohere", "stablelm", "phi3"),
    *("starcoder2", "smollm3"),
)
_BERT_TYPES = ("bert", "roberta", "xlm-roberta", "camembert", "electra", "xlm-roberta-xl")

#: ``config.model_type`` -> where the parts are.
FAMILIES: dict[str, FamilyPaths] = {
    **dict.fromkeys(_DECODER_TYPES, _DECODER),
    **dict.fromkeys(_BERT_TYPES, _BERT),
    "phi": FamilyPaths("embed_tokens", "layers", "final_layernorm"),
    "gpt2": FamilyPaths("wte", "h", "ln_f", "wpe"),
    "gptj": FamilyPaths("wte", "h", "ln_f"),
    "gpt_neox": FamilyPaths("embed_in", "layers", "final_layer_norm"),
    "bloom": FamilyPaths("word_embeddings", "h", "ln_f"),
    "falcon": FamilyPaths("word_embeddings", "h", "ln_f"),
    "opt": FamilyPaths(
        "decoder.embed_tokens",
        "decoder.layers",
        "decoder.final_layer_norm",
        "decoder.embed_positions",
    ),
}

#: Families whose absolute position ids start at ``pad_token_id + 1`` (fairseq convention).
PADDING_OFFSET_FAMILIES = frozenset({"roberta", "xlm-roberta", "camembert", "xlm-roberta-xl"})

#: Encoder families loaded with ``AutoModel`` even when no ``architectures`` are recorded.
ENCODER_FAMILIES = frozenset(
    {"bert", "roberta", "xlm-roberta", "camembert", "electra", "distilbert", "deberta",
     "deberta-v2", "xlm-roberta-xl", "mpnet", "albert"}
)  # fmt: skip

_NORM_NAMES = (
    *("norm", "ln_f", "final_layer_norm", "final_layernorm", "final_norm", "ln_final", "norm_f"),
)
_POSITION_NAMES = ("wpe", "position_embeddings", "embed_positions")


@dataclass
class ModelAdapter:
    """Where one model keeps the parts that capture hooks into.

    ``base`` is the module whose forward runs embedding -> blocks -> final norm;
    ``blocks[i]``'s output is site ``L{i}``; the input of ``blocks[0]`` is site ``embed``.
    """

    family: str
    base: nn.Module
    embedding: nn.Module
    blocks: list[nn.Module]
    final_norm: nn.Module | None
    has_additive_positions: bool
    #: full module paths (from the top model) for the manifest: ``embedding``, ``blocks``
    #: (a prefix; block i is ``{blocks}.{i}``), ``final_norm``, ``base``, ``positions``.
    paths: dict[str, str | None] = field(default_factory=dict)
    #: absolute position of the first real token (RoBERTa/XLM-R: ``pad_token_id + 1``).
    position_offset: int = 0
    #: position id given to padding (RoBERTa/XLM-R: ``pad_token_id``).
    pad_position: int = 0

    @property
    def n_layers(self) -> int:
        return len(self.blocks)


def is_causal_lm_config(config: Any) -> bool:
    """True when ``config`` describes a decoder LM (loaded with ``AutoModelForCausalLM``)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    if getattr(config, "is_encoder_decoder", False):
        return False
    archs: Sequence[str] = getattr(config, "architectures", None) or ()
    if archs:
        return any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs)
    model_type = getattr(config, "model_type", "")
    return model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and model_type not in ENCODER_FAMILIES


# ---------------------------------------------------------------------------------------------
# adapters


def _get_path(root: nn.Module, path: str) -> Any:
    obj: Any = root
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def resolve_adapter(model: nn.Module) -> ModelAdapter:
    """Find the embedding, the blocks and the final norm of ``model`` (see the module doc)."""
    config = getattr(model, "config", None)
    family = str(getattr(config, "model_type", type(model).__name__.lower()))
    base = getattr(model, "base_model", None)
    if not isinstance(base, nn.Module):
        base = model
    names = {id(m): n for n, m in model.named_modules()}

    def path_of(m: nn.Module | None) -> str | None:
        return None if m is None else (names.get(id(m)) or "<root>")

    paths = FAMILIES.get(family)
    found = _from_family(base, paths) if paths is not None else None
    if found is None:
        found = _generic_search(base, config, family)
    embedding, blocks_module, final_norm, positions = found
    blocks = list(blocks_module)
    offset, pad_position = 0, 0
    if family in PADDING_OFFSET_FAMILIES:
        pad_id = getattr(config, "pad_token_id", None)
        pad_position = int(pad_id) if pad_id is not None else 1
        offset = pad_position + 1
    return ModelAdapter(
        family=family,
        base=base,
        embedding=embedding,
        blocks=blocks,
        final_norm=final_norm,
        has_additive_positions=positions is not None,
        paths={
            "base": path_of(base),
            "embedding": path_of(embedding),
            "blocks": path_of(blocks_module),
            "final_norm": path_of(final_norm),
            "positions": path_of(positions),
        },
        position_offset=offset,
        pad_position=pad_position,
    )


_Found = tuple[nn.Module, nn.ModuleList, nn.Module | None, nn.Module | None]


def _from_family(base: nn.Module, paths: FamilyPaths) -> _Found | None:
    embedding = _get_path(base, paths.embedding)
    blocks = _get_path(base, paths.blocks)
    if not isinstance(embedding, nn.Module) or not isinstance(blocks, nn.ModuleList):
        return None
    final_norm = _get_path(base, paths.final_norm) if paths.final_norm else None
    positions = _get_path(base, paths.positions) if paths.positions else None
    return (
        embedding,
        blocks,
        final_norm if isinstance(final_norm, nn.Module) else None,
        positions if isinstance(positions, nn.Module) else None,
    )


def _generic_search(base: nn.Module, config: Any, family: str) -> _Found:
    where = f"{type(base).__name__} (model_type '{family}')"
    try:
        embedding = base.get_input_embeddings()  # type: ignore[operator]
    except (AttributeError, NotImplementedError, TypeError):
        embedding = None
    if not isinstance(embedding, nn.Module):
        raise XlalignError(
            f"unsupported model: no input embedding module found in {where} "
            "(get_input_embeddings() gave none)"
        )
    n_layers = getattr(config, "num_hidden_layers", None)
    candidates = [
        (name, m)
        for name, m in base.named_modules()
        if isinstance(m, nn.ModuleList)
        and len(m) > 0
        and (n_layers is None or len(m) == n_layers)
        and len({type(b) for b in m}) == 1
    ]
    if not candidates:
        wanted = f"{n_layers} " if n_layers is not None else ""
        raise XlalignError(
            f"unsupported model: no list of transformer blocks found in {where} "
            f"(looked for an nn.ModuleList of {wanted}identical modules)"
        )
    _, blocks = min(candidates, key=lambda c: c[0].count("."))
    final_norm = next(
        (m for name in _NORM_NAMES if isinstance(m := getattr(base, name, None), nn.Module)), None
    )
    inside_blocks = {id(m) for m in blocks.modules()}
    positions = next(
        (
            m
            for name, m in base.named_modules()
            if name.rsplit(".", 1)[-1] in _POSITION_NAMES
            and isinstance(m, nn.Embedding)
            and id(m) not in inside_blocks
        ),
        None,
    )
    return embedding, blocks, final_norm, positions


#: Where a block keeps its feed-forward activation (the module whose output the feed-forward
#: neurons are): gated MLPs (Qwen2, Llama, Mistral, Gemma: ``down_proj(act_fn(gate_proj(x)) *
#: up_proj(x))``), GPT-2 style (``c_proj(act(c_fc(x)))``) and BERT style
#: (``intermediate.intermediate_act_fn``), tried in this order.
MLP_ACTIVATION_PATHS = ("mlp.act_fn", "mlp.act", "intermediate.intermediate_act_fn")
#: The gate's projection, present in gated MLPs only.
MLP_GATE_PATHS = ("mlp.gate_proj",)


@dataclass(frozen=True)
class MlpActivations:
    """Each block's feed-forward activation module, and what kind of MLP it sits in.

    ``modules[i]`` is block ``i``'s activation: its output, ``(batch, tokens, n_neurons)``, holds
    the block's neurons (for a gated MLP ``act(gate_proj(x))``, which multiplies ``up_proj(x)``
    before the down projection, as in LAPE's code; for a plain MLP the down projection's input).
    Zeroing a neuron there zeroes its column of the down projection's input either way.
    """

    modules: list[nn.Module]
    #: the attribute path inside a block, e.g. ``mlp.act_fn``
    path: str
    gated: bool


def mlp_activations(adapter: ModelAdapter) -> MlpActivations:
    """Find every block's feed-forward activation (see :data:`MLP_ACTIVATION_PATHS`).

    Raises :class:`XlalignError` naming the block class and the paths looked for when a block
    has none, and when blocks share one activation module (a hook could not tell them apart).
    """
    first = adapter.blocks[0]
    for path in MLP_ACTIVATION_PATHS:
        modules = [_get_path(block, path) for block in adapter.blocks]
        if not all(isinstance(m, nn.Module) for m in modules):
            continue
        if len({id(m) for m in modules}) != len(modules):
            raise XlalignError(
                f"the blocks of {type(first).__name__} share one activation module ({path}), "
                "so a hook cannot tell their neurons apart"
            )
        gated = any(_has_path(first, g) for g in MLP_GATE_PATHS)
        return MlpActivations(modules, path, gated)
    raise XlalignError(
        f"no feed-forward activation module found in {type(first).__name__} (looked for "
        f"{', '.join(MLP_ACTIVATION_PATHS)}): the neuron study supports gated MLPs "
        "(Qwen2, Llama, Gemma) and GPT-2/BERT-style MLPs"
    )


def _has_path(root: nn.Module, path: str) -> bool:
    return isinstance(_get_path(root, path), nn.Module)
