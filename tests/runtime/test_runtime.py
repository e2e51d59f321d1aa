"""archc.runtime as a package: every name generated code uses is re-exported, its classes
pickle, and the one attention implementation (attend, attention_probs, ALiBi's bias, the
causal mask) agrees with the formulas written out by hand."""

import math
import pickle
import re
from pathlib import Path

import pytest
import torch

import archc
from archc import runtime as rt

ROOT = Path(__file__).resolve().parents[2]


def test_every_name_generated_code_uses_is_exported():
    used = set()
    for path in sorted((ROOT / "specs").glob("*.arch")):
        for mode in ("train", "infer"):
            source = archc.compile_source(path, mode=mode)
            used |= set(re.findall(r"\brt\.([A-Za-z_]\w*)", source))
    assert used, "no rt.* name found in the generated files"
    assert sorted(n for n in used if not hasattr(rt, n)) == []
    assert sorted(n for n in rt.__all__ if not hasattr(rt, n)) == []


def test_public_names_pickle_by_the_package_path():
    """A pickle written before the split names archc.runtime.KVCache: it must still load.
    (A whole generated model does not pickle: its module is made in memory, before and
    after; its state dict does.)"""
    cache = rt.KVCache([(2, 4)], batch=1, max_len=8)
    cache.pos = 3
    back = pickle.loads(pickle.dumps(cache))
    assert back.pos == 3 and torch.equal(back.k[0], cache.k[0])
    for name in ("KVCache", "HeadLoop", "SigmaLinear", "MoE"):  # protocol 0's GLOBAL opcode
        assert pickle.loads(f"carchc.runtime\n{name}\n.".encode()) is getattr(rt, name)
    model = archc.build("specs/sgt.arch")  # its rt modules' state pickles as before
    again = archc.build("specs/sgt.arch")
    again.load_state_dict(pickle.loads(pickle.dumps(model.state_dict())))
    tokens = torch.randint(0, 32, (1, 6))
    with torch.no_grad():
        assert torch.equal(model.eval()(tokens), again.eval()(tokens))


def _slopes_by_hand(h: int) -> list[float]:
    start = 2 ** (-8 / h)  # Press et al., for a power of two
    return [start ** (i + 1) for i in range(h)]


def test_alibi_bias_is_minus_slope_times_distance():
    slopes = rt.alibi_slopes(4)
    assert torch.allclose(slopes, torch.tensor(_slopes_by_hand(4)))
    bias = rt.alibi_bias(slopes, torch.arange(5, 8), torch.arange(8))
    dist = torch.arange(5, 8)[:, None] - torch.arange(8)[None, :]
    assert bias.shape == (4, 3, 8)
    assert torch.equal(bias, -slopes[:, None, None] * dist.float())


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("alibi", [True, False])
@pytest.mark.parametrize("t,s", [(6, 6), (2, 6), (1, 6)])
@pytest.mark.parametrize("kv", [4, 2])
def test_attend_is_softmax_attention_written_out(causal, alibi, t, s, kv):
    torch.manual_seed(0)
    q = torch.randn(2, 4, t, 8, dtype=torch.float64)
    k = torch.randn(2, kv, s, 8, dtype=torch.float64)
    v = torch.randn(2, kv, s, 8, dtype=torch.float64)
    kk, vv = (x.repeat_interleave(4 // kv, dim=1) for x in (k, v))
    logits = q @ kk.transpose(-1, -2) / math.sqrt(8)
    if alibi:
        pos_q, pos_k = torch.arange(s - t, s), torch.arange(s)
        dist = (pos_q[:, None] - pos_k[None, :]).double()
        logits = logits - torch.tensor(_slopes_by_hand(4)).double()[:, None, None] * dist
    if causal:
        seen = torch.arange(s)[None, :] <= torch.arange(s - t, s)[:, None]
        logits = logits.masked_fill(~seen, float("-inf"))
    expected = torch.softmax(logits, dim=-1) @ vv
    got = rt.attend(q, k, v, causal=causal, alibi=alibi)
    assert torch.allclose(got, expected, atol=1e-6)  # float32 slopes
    if not alibi:
        probs = rt.attention_probs(q, k, causal=causal)
        assert torch.allclose(probs @ vv, got, atol=1e-12)


def test_attention_probs_rows_are_causal_distributions():
    torch.manual_seed(0)
    p = rt.attention_probs(torch.randn(1, 4, 5, 8), torch.randn(1, 2, 5, 8))
    assert torch.allclose(p.sum(-1), torch.ones(1, 4, 5))
    assert bool((p.triu(1) == 0).all())


def test_head_loop_ranks_heads_by_the_shared_attention_weights():
    """HeadLoop.choose keeps the `count` heads of highest entropy under attention_probs."""
    torch.manual_seed(0)
    heads, kv, dh, count = 4, 2, 8, 2
    d = heads * dh
    attn = torch.nn.Module()
    attn.q, attn.k = torch.nn.Linear(d, d), torch.nn.Linear(d, kv * dh)
    h = torch.randn(2, 7, d)
    loop = rt.HeadLoop(count, heads, kv, dh)
    loop.choose(h, attn, None)
    with torch.no_grad():
        p = rt.attention_probs(rt.split_heads(attn.q(h), heads),
                               rt.split_heads(attn.k(h), kv))
    entropy = -(p * torch.log(p.clamp_min(1e-30))).sum(-1).mean(dim=(0, 2))
    assert loop.heads.tolist() == sorted(entropy.topk(count).indices.tolist())
    assert bool(loop.chosen)


def test_causal_mask_sees_the_past_of_the_last_positions():
    assert rt.causal_mask(2, 4).tolist() == [[True, True, True, False], [True] * 4]
    assert torch.equal(rt.causal_mask(3, 3), torch.ones(3, 3, dtype=torch.bool).tril())


def test_fold_uses_the_runtime_effective_weights():
    """archc.reparam folds sigma-Reparam and DSFormer weights with the runtime's own
    functions: the folded weight is bit for bit what the eval forward multiplies by."""
    from archc import fold

    torch.manual_seed(0)
    sigma = rt.SigmaLinear(12, 7).train()
    sigma(torch.randn(3, 12))  # one power step moves u off its init
    sigma.eval()
    src = {"l.weight": sigma.weight.detach(), "l.u": sigma.u, "l.gamma": sigma.gamma.detach()}
    assert torch.equal(fold._value(("sigma_weight", "l"), src, ""),
                       sigma.effective_weight().detach())
    ds = rt.DSLinear(12, 7, rank=4, nnz=2)
    src = {"l.sparse": ds.sparse.detach()}
    folded = fold._value(("ds_sparse", "l", 2), src, "")
    assert torch.equal(folded, ds.sparse_factor().detach())
    assert bool(((folded != 0).sum(0) == 2).all())
    text = Path(fold.__file__).read_text()
    assert "normalize" not in text and "topk" not in text  # the math is not restated
