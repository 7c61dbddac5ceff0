"""Site specs, pool specs and the pooling maths on hand-made batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xlalign.capture.batching import make_batch, plan_batches, tokenize
from xlalign.capture.pooling import make_plan, pool
from xlalign.errors import XlalignError
from xlalign.store.pools import parse_pools
from xlalign.store.sites import describe_sites, parse_sites
from xlalign.store.writer import TokenData


def test_parse_sites_orders_by_depth_and_dedups():
    assert parse_sites("L5-L7,embed,L0,final,L6", 36, True) == [
        "embed", "L0", "L5", "L6", "L7", "final",
    ]  # fmt: skip
    assert parse_sites("all", 3, True) == ["embed", "L0", "L1", "L2", "final"]
    assert parse_sites("all", 3, False) == ["embed", "L0", "L1", "L2"]
    assert parse_sites(["L2", "embed"], 3, False) == ["embed", "L2"]
    assert parse_sites("L1-2", 3, False) == ["L1", "L2"]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("L40", "site 'L40' not in model: it has embed, L0..L35, final"),
        ("L30-L40", "site 'L40' not in model"),
        ("L7-L3", "runs backwards"),
        ("layer7", "site 'layer7' not understood"),
        ("", "no sites given"),
    ],
)
def test_parse_sites_errors(spec, message):
    with pytest.raises(XlalignError, match=message):
        parse_sites(spec, 36, True)


def test_final_without_a_final_norm():
    with pytest.raises(XlalignError, match=r"it has embed, L0\.\.L5 \(model has no final norm\)"):
        parse_sites("final", 6, False)


def test_describe_sites_collapses_runs():
    assert describe_sites(["embed", "L0", "L1", "L2", "final"]) == "embed, L0..L2, final"
    assert describe_sites(["L0", "L2", "L3", "L5"]) == "L0, L2..L3, L5"
    assert describe_sites([]) == "no sites"


def test_parse_pools():
    assert parse_pools("last, mean,last") == ["last", "mean"]
    assert parse_pools(("tokens", "weighted")) == ["tokens", "weighted"]
    with pytest.raises(XlalignError, match="pool 'max' unknown"):
        parse_pools("last,max")
    with pytest.raises(XlalignError, match="no pools given"):
        parse_pools("")


def _hidden(lengths, padding_side, d=3, poison=float("nan")):
    """A padded batch whose real token t of row b is (b, t, t*t)... and padding is poison."""
    t_max = max(lengths)
    h = torch.full((len(lengths), t_max, d), poison)
    mask = torch.zeros(len(lengths), t_max, dtype=torch.long)
    for b, n in enumerate(lengths):
        vals = torch.tensor([[b + 1.0, t + 1.0, (t + 1.0) ** 2] for t in range(n)])
        sl = slice(0, n) if padding_side == "right" else slice(t_max - n, t_max)
        h[b, sl] = vals
        mask[b, sl] = 1
    return h, mask


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_pools_read_real_tokens_only(padding_side):
    lengths = [4, 1, 3]
    h, mask = _hidden(lengths, padding_side)
    special = torch.zeros_like(mask, dtype=torch.bool)
    # the first real token of row 0 is special (a BOS/CLS): mean leaves it out, nothing else does
    special[0, mask[0].nonzero()[0, 0]] = True
    plan = make_plan(mask, special, ["last", "mean", "first", "weighted", "tokens"])
    pooled, tokens = pool(h, plan)
    assert pooled.shape == (3, 4, 3) and pooled.dtype == torch.float32
    assert torch.isfinite(pooled).all() and tokens is not None and torch.isfinite(tokens).all()
    for b, n in enumerate(lengths):
        real = np.array([[b + 1.0, t + 1.0, (t + 1.0) ** 2] for t in range(n)])
        keep = real[1:] if b == 0 else real
        w = np.arange(1, n + 1, dtype=np.float64)
        expected = [real[-1], keep.mean(0), real[0], (w[:, None] * real).sum(0) / w.sum()]
        np.testing.assert_allclose(pooled[b].numpy(), np.stack(expected), rtol=1e-6)
    assert tokens.shape == (sum(lengths), 3)
    np.testing.assert_array_equal(tokens[:4, 1].numpy(), [1, 2, 3, 4])
    np.testing.assert_array_equal(tokens[4:5, 0].numpy(), [2])


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_matmul_and_elementwise_paths_agree(padding_side, monkeypatch):
    import xlalign.capture.pooling as pooling

    torch.manual_seed(0)
    h, mask = _hidden([5, 2, 4], padding_side)
    h = torch.where(torch.isnan(h), h, torch.randn_like(h))
    special = torch.zeros_like(mask, dtype=torch.bool)
    plan = make_plan(mask, special, ["last", "mean", "first", "weighted"])
    fast, _ = pool(h, plan)
    monkeypatch.setattr(pooling, "_matmul_is_exact_fp32", lambda device: False)
    slow, _ = pool(h, plan)
    torch.testing.assert_close(fast, slow, rtol=1e-6, atol=1e-7)
    # first and last are exact copies on both paths
    assert torch.equal(fast[:, [0, 2]], slow[:, [0, 2]])
    real = mask.bool()
    for b in range(3):
        assert torch.equal(fast[b, 0], h[b][real[b]][-1])
        assert torch.equal(fast[b, 2], h[b][real[b]][0])


def test_mean_of_only_special_tokens_is_zero_not_nan():
    h, mask = _hidden([2], "right", poison=0.0)
    plan = make_plan(mask, torch.ones_like(mask, dtype=torch.bool), ["mean"])
    pooled, _ = pool(h, plan)
    assert torch.equal(pooled, torch.zeros(1, 1, 3))


def test_batches_and_positions_follow_the_mask():
    data = TokenData(
        ids=np.array([5, 6, 7, 8, 9, 10], dtype=np.int32),
        offsets=np.array([0, 3, 4, 6]),
        special=np.zeros(6, dtype=bool),
    )
    assert [b.tolist() for b in plan_batches(data.lengths, 2)] == [[0, 2], [1]]
    left = make_batch(data, np.array([0, 1]), padding_side="left", pad_id=0)
    assert left.input_ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert left.attention_mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert left.position_ids.tolist() == [[0, 1, 2], [0, 0, 0]]
    right = make_batch(data, np.array([2, 1]), padding_side="right", pad_id=0)
    assert right.position_ids.tolist() == [[0, 1], [0, 0]]
    # RoBERTa / XLM-R count positions from pad_token_id + 1 and give padding pad_token_id
    roberta = make_batch(
        data, np.array([0, 1]), padding_side="left", pad_id=1, position_offset=2, pad_position=1
    )
    assert roberta.position_ids.tolist() == [[2, 3, 4], [1, 1, 2]]


def test_tokenize_keeps_special_mask(wordpiece_tokenizer):
    data = tokenize(wordpiece_tokenizer, ["find the value", "c"])
    assert data.offsets[0] == 0 and len(data.offsets) == 3
    ids, special = data.row(0)
    assert ids[0] == wordpiece_tokenizer.cls_token_id and special[0] and special[-1]
    assert not special[1:-1].any()


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_last_skips_appended_special_tokens_and_eos_is_the_appended_one(padding_side, monkeypatch):
    import xlalign.capture.pooling as pooling

    torch.manual_seed(0)
    h, mask = _hidden([5, 3, 4], padding_side)
    h = torch.where(torch.isnan(h), h, torch.randn_like(h))
    real = mask.bool()
    special = torch.zeros_like(real)
    for b in range(3):  # [CLS] ... [SEP]: the first and the last real token are special
        pos = torch.nonzero(real[b]).flatten()
        special[b, pos[0]] = special[b, pos[-1]] = True
    plan = make_plan(mask, special, ["last", "eos", "first"])
    fast, _ = pool(h, plan)
    monkeypatch.setattr(pooling, "_matmul_is_exact_fp32", lambda device: False)
    slow, _ = pool(h, plan)
    for out in (fast, slow):
        for b in range(3):
            pos = torch.nonzero(real[b]).flatten()
            assert torch.equal(out[b, 0], h[b, pos[-2]])  # the token before [SEP]
            assert torch.equal(out[b, 1], h[b, pos[-1]])  # [SEP]
            assert torch.equal(out[b, 2], h[b, pos[0]])  # [CLS]
    # pool order and MEXA's absolute positions leave 'last' alone
    after, _ = pool(
        h, make_plan(mask, special, ["weighted", "last"], weighted_positions="absolute")
    )
    assert torch.equal(after[:, 1], slow[:, 0])


def test_last_of_only_special_tokens_is_the_final_token_and_eos_needs_a_special_end():
    h, mask = _hidden([2, 3], "right", poison=0.0)
    special = mask.bool().clone()  # row 0: all special
    special[1] = False
    plan = make_plan(mask, special, ["last"])
    pooled, _ = pool(h, plan)
    assert torch.equal(pooled[0, 0], h[0, 1]) and torch.equal(pooled[1, 0], h[1, 2])
    with pytest.raises(XlalignError, match="pool 'eos' needs a special token"):
        make_plan(mask, special, ["eos"])
