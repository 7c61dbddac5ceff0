"""Load a Hugging Face model and find the parts capture hooks into: embedding, blocks, final norm.

:func:`load_model` takes a Hub id or a local folder and returns a :class:`LoadedModel`: the
model, its tokenizer, a :class:`ModelAdapter` that names the embedding module, the list of
transformer blocks and the final norm, and the facts a run records (dtype, device, revision,
whether the tokenizer adds a BOS token).

The parts themselves are found by :mod:`xlalign.models.architecture`.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from xlalign.errors import XlalignError
from xlalign.models.architecture import ModelAdapter, is_causal_lm_config, resolve_adapter
from xlalign.models.device import input_device, resolve_device, resolve_dtype
from xlalign.models.fingerprints import weights_fingerprint
from xlalign.models.folders import check_model_folder
from xlalign.models.hub import check_hub_reachable, first_line, hub_commit, looks_like_path


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
    #: file's path, sha256 and quantization type (see :mod:`xlalign.models.gguf`).
    checkpoint: dict[str, Any] | None = None
    #: the absolute path of a local model folder or file as given (None: a named model, a Hub
    #: id or a model in memory), so a later command finds it from any working directory.
    model_path: str | None = None

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

    local, checkpoint = resolve_source(model)
    if local.is_dir() and checkpoint is None and not (local / "config.json").is_file():
        if looks_like_path(model):
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
    if not local.exists() and looks_like_path(model):
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
            f"cannot load model '{model}': no such local folder, and the Hub gave: {first_line(e)}"
        ) from None
    except ValueError as e:
        raise XlalignError(f"cannot load the config of '{model}': {first_line(e)}") from None
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
        raise XlalignError(f"cannot load the tokenizer of '{model}': {first_line(e)}") from None

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
        raise XlalignError(f"cannot load the weights of '{model}': {first_line(e)}") from None
    except ImportError as e:
        raise XlalignError(f"cannot load '{model}': {first_line(e)}") from None
    except ValueError as e:
        if device_map is None:
            raise
        # Accelerate's refusals (no room for the model, no offload folder) are user-fixable.
        raise XlalignError(
            f"cannot place '{model}' with --device-map {device_map}: {first_line(e)}"
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
        # where transformers does not say (offline, from the cache), the cache's refs do
        commit_hash=getattr(config, "_commit_hash", None)
        or (None if local.is_dir() else hub_commit(model, revision)),
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
        model_path=str(Path(model).expanduser().resolve())
        if Path(model).expanduser().exists()
        else None,
    )


def load_tokenizer(model: str, *, trust_remote_code: bool = False) -> Any:
    """The tokenizer of ``model``: a named model, a ``.gguf`` file, a local folder or a Hub id."""
    from transformers import AutoTokenizer

    folder, _ = resolve_source(model)
    source = str(folder) if folder.exists() else model
    try:
        return AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise XlalignError(f"cannot load the tokenizer of '{model}': {first_line(e)}") from None


def resolve_source(model: str) -> tuple[Path, dict[str, Any] | None]:
    """The local path to load ``model`` from, and what a named or GGUF model came from.

    A name from :data:`~xlalign.models.named.NAMED_MODELS` resolves to its installed files; a
    ``.gguf`` file (or a folder holding exactly one) to its dequantized, cached copy.
    """
    from xlalign.models.gguf import dequantized_folder, find_gguf
    from xlalign.models.named import is_named, resolve_named

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
