"""A NaN in one token names the pools that read that token, not every pool of the site."""

from __future__ import annotations

import re

import pytest
import torch

import xlalign
from xlalign.errors import XlalignError
from xlalign.models.loading import load_model


def _poison(loaded, position: int):
    """Put NaN into block 0's output at ``position`` of every prompt (right padding)."""

    def hook(module, args, output):
        hidden = output if isinstance(output, torch.Tensor) else output[0]
        hidden[:, position] = float("nan")
        return output

    return loaded.adapter.blocks[0].register_forward_hook(hook)


@pytest.mark.parametrize(
    "position,reached,spared",
    [(0, ["first", "mean", "weighted"], ["last"]), (-1, ["last", "mean", "weighted"], ["first"])],
)
def test_nan_in_one_token_names_its_pools(tiny_models, problems, tmp_path, position, reached,
                                          spared):  # fmt: skip
    loaded = load_model(str(tiny_models["qwen2"]), device="cpu")
    # every prompt as long as the longest of its batch: position -1 is a real token in each
    corpus = problems.head(2).select(["zh", "en"])
    handle = _poison(loaded, position)
    try:
        with pytest.raises(XlalignError) as err:
            xlalign.extract(loaded, corpus, "zh,en", sites="L0,L1",
                            pools="first,last,mean,weighted", batch_size=1, output=tmp_path / "r",
                            progress=False)  # fmt: skip
    finally:
        handle.remove()
    message = str(err.value)
    assert "non-finite values (NaN) at site L0" in message, message
    named = re.search(r"pool\(s\) ([a-z, ]+) read them", message)
    assert named is not None, message
    names = named.group(1).split(", ")
    assert sorted(names) == sorted(reached) and not set(spared) & set(names), message
