"""specs/recurrent_transformer.arch (The Recurrent Transformer, TOPOLOGIES.md 1.2) against
a hand-written naive per-position loop.

Reference computation, layer with input x, position t (H_kv = H, no biases, ALiBi, no RoPE):
  h_t = LN(x_t); q_t = W_q h_t; diagonal key/value k^_t = W_k h_t, v^_t = W_v h_t
  past keys/values (s < t): k_s = W_k LN(out_s), v_s = W_v LN(out_s)  (same LN module)
  att_t = softmax_s([q_t . k_s / sqrt(dh) - slope_h (t - s)]_{s<t} u [q_t . k^_t / sqrt(dh)])
  u_t = x_t + W_o att_t; out_t = u_t + SwiGLU(LN'(u_t))
Then a final LayerNorm and the tied head. ALiBi slopes (H a power of two): 2^(-8(h+1)/H).
"""

import math

import pytest
import torch
from torch import nn

import archc
from refs import (LayerNorm, SwiGLU, WeightSource, load_exact, randomize_, assert_close,
                  n_params, tokens, check_train_step, take, SWIGLU_PAIRS,
                  alibi_slopes_pow2, check_decode_matches_prefill)

SPEC = "specs/recurrent_transformer.arch"
BASE = "specs/transformer.arch"

CFG = dict(d=32, depth=2, heads=4, hidden=48)
CONFIGS = [CFG, dict(d=32, depth=1, heads=2, hidden=40), dict(d=32, depth=3, heads=8, hidden=40)]
ids = lambda c: "-".join(f"{k}{v}" for k, v in c.items())
T_LEN = 13   # not a power of two: the tiled prefill's last blocks are cut short


class RecurrentBlock(nn.Module):
    def __init__(self, d, heads, hidden):
        super().__init__()
        self.n_heads, self.head_dim = heads, d // heads
        self.ln_attn = LayerNorm(d)
        self.wq = nn.Linear(d, d, bias=False)
        self.wk = nn.Linear(d, d, bias=False)
        self.wv = nn.Linear(d, d, bias=False)
        self.wo = nn.Linear(d, d, bias=False)
        self.ln_ffn = LayerNorm(d)
        self.ffn = SwiGLU(d, hidden)
        self.register_buffer("slopes", alibi_slopes_pow2(heads), persistent=False)

    def split(self, y):           # [B, d] -> [B, H, dh]
        return y.reshape(y.shape[0], self.n_heads, self.head_dim)

    def forward(self, x, return_kv=False):
        B, T, d = x.shape
        past_k, past_v, outs = [], [], []
        for t in range(T):
            xt = x[:, t]
            h = self.ln_attn(xt)
            q, kd, vd = self.split(self.wq(h)), self.split(self.wk(h)), self.split(self.wv(h))
            keys = torch.stack(past_k + [kd], dim=2)            # [B, H, t+1, dh]
            values = torch.stack(past_v + [vd], dim=2)
            logits = (keys @ q.unsqueeze(-1)).squeeze(-1) / math.sqrt(self.head_dim)  # [B, H, t+1]
            dist = torch.tensor([float(t - s) for s in range(t + 1)])
            logits = logits - self.slopes[:, None] * dist[None, :]
            att = (logits.softmax(-1).unsqueeze(-1) * values).sum(2)          # [B, H, dh]
            u = xt + self.wo(att.reshape(B, d))
            out = u + self.ffn(self.ln_ffn(u))
            ho = self.ln_attn(out)
            past_k.append(self.split(self.wk(ho)))
            past_v.append(self.split(self.wv(ho)))
            outs.append(out)
        y = torch.stack(outs, dim=1)
        if return_kv:
            return y, torch.stack(past_k, dim=2), torch.stack(past_v, dim=2)
        return y


class RefRecurrentTransformer(nn.Module):
    def __init__(self, vocab=256, d=64, depth=2, heads=4, hidden=172):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.blocks = nn.ModuleList(RecurrentBlock(d, heads, hidden) for _ in range(depth))
        self.final_norm = LayerNorm(d)

    def forward(self, toks, return_kv=False):
        x = self.embed(toks)
        kvs = []
        for blk in self.blocks:
            x, k, v = blk(x, return_kv=True)
            kvs.append((k, v))
        logits = self.final_norm(x) @ self.embed.weight.T
        return (logits, kvs) if return_kv else logits


def copy_weights(m, ref, depth):
    src = WeightSource(m)
    w = {"embed.weight": src["emb.weight"], "final_norm.weight": src["layernorm.weight"],
         "final_norm.bias": src["layernorm.bias"]}
    for i in range(depth):
        r, a = f"blocks.{i}.", f"layers.{i}."
        take(w, src, [("ln_attn.weight", "norm.weight"), ("ln_attn.bias", "norm.bias"),
                      ("ln_ffn.weight", "layernorm.weight"), ("ln_ffn.bias", "layernorm.bias"),
                      ("wq.weight", "attn.q.weight"), ("wk.weight", "attn.k.weight"),
                      ("wv.weight", "attn.v.weight"), ("wo.weight", "attn.o.weight")], r, a)
        take(w, src, SWIGLU_PAIRS, r + "ffn.", a + "swiglu.")
    load_exact(ref, w, src)


def make_pair(cfg, seed=1):
    m = archc.build(SPEC, **cfg)
    randomize_(m, seed=seed)
    with torch.no_grad():   # larger q/k so the attention pattern is far from ALiBi alone
        for layer in m.layers:
            layer.attn.q.weight.mul_(4.0)
            layer.attn.k.weight.mul_(4.0)
    ref = RefRecurrentTransformer(**cfg)
    copy_weights(m, ref, cfg["depth"])
    return m, ref


def set_mode(m, mode):
    for layer in m.layers:
        assert layer.scan_mode in ("tiled", "naive")
        layer.scan_mode = mode


def test_alibi_slopes_known_values():
    """Press et al.: H = 8 gives 1/2, 1/4, ..., 1/256."""
    assert torch.allclose(alibi_slopes_pow2(8), torch.tensor([2.0 ** -(i + 1) for i in range(8)]))


@pytest.mark.parametrize("cfg", CONFIGS, ids=ids)
@pytest.mark.parametrize("mode", ["tiled", "naive"])
def test_matches_naive_reference(cfg, mode):
    m, ref = make_pair(cfg)
    assert all(layer.scan_mode == "tiled" for layer in m.layers), "tiled is the default"
    set_mode(m, mode)
    x = tokens(T=T_LEN)
    with torch.no_grad():
        assert_close(m(x), ref(x), f"{mode} scan vs naive reference {cfg}")


def test_tiled_equals_naive_scan():
    m, _ = make_pair(CFG)
    x = tokens(T=T_LEN)
    with torch.no_grad():
        for model, tol in [(m, 1e-5), (m.double(), 1e-12)]:
            tiled = model(x)
            set_mode(model, "naive")
            naive = model(x)
            set_mode(model, "tiled")
            assert_close(tiled, naive, f"tiled vs naive scan ({tiled.dtype})", tol)


def test_tiled_gradients_equal_naive():
    """The tiled prefill is exact in the backward pass too (float64: rounding only)."""
    m, _ = make_pair(CFG)
    m = m.double()
    x = tokens(T=T_LEN)
    grads = {}
    for mode in ("tiled", "naive"):
        set_mode(m, mode)
        m.zero_grad()
        logits = m(x)
        torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 256), x[:, 1:].reshape(-1)).backward()
        grads[mode] = {n: p.grad.clone() for n, p in m.named_parameters()}
    for n, g in grads["tiled"].items():
        assert_close(g, grads["naive"][n], f"grad of {n}: tiled vs naive", 1e-12)


def test_past_keys_come_from_outputs():
    """The cache holds k_s, v_s = W_k/v LN(out_s): the keys of each layer's own output."""
    m, ref = make_pair(CFG)
    x = tokens(B=1, T=7)
    cache = m.eval().new_cache(batch=1, max_len=7)
    with torch.no_grad():
        m(x, cache=cache)
        _, kvs = ref(x, return_kv=True)
    for i, (k, v) in enumerate(kvs):
        assert_close(cache.k[i], k, f"cached K of layer {i}")
        assert_close(cache.v[i], v, f"cached V of layer {i}")


@pytest.mark.parametrize("mode", ["tiled", "naive"])
def test_decode_matches_prefill(mode):
    m, _ = make_pair(CFG)
    set_mode(m, mode)
    check_decode_matches_prefill(m, tokens(B=2, T=T_LEN))


def test_causal():
    m, _ = make_pair(CFG)
    x = tokens(T=T_LEN)
    y = x.clone()
    y[:, 6:] = (y[:, 6:] + 7) % 256
    with torch.no_grad():
        a, b = m(x), m(y)
    assert_close(a[:, :6], b[:, :6], "outputs before the edited position")
    assert (a[:, 6:] - b[:, 6:]).abs().max() > 1e-4


@pytest.mark.parametrize("cfg", CONFIGS, ids=ids)
def test_cache_bytes_equal_standard_decoder(cfg):
    """Same L, H_kv (= H), dh as a standard decoder: same KV-cache bytes."""
    m = archc.build(SPEC, **cfg).eval()
    base = archc.build(BASE, d=cfg["d"], depth=cfg["depth"], heads=cfg["heads"],
                       kv_heads=cfg["heads"], hidden=cfg["hidden"]).eval()
    assert m.new_cache(2, 16).nbytes == base.new_cache(2, 16).nbytes
    assert m.new_cache(2, 16).nbytes == cfg["depth"] * 2 * 2 * 16 * cfg["d"] * 4


def test_param_count():
    for cfg in CONFIGS:
        d, L, hid = cfg["d"], cfg["depth"], cfg["hidden"]
        expected = 256 * d + L * (4 * d * d + 3 * d * hid + 4 * d) + 2 * d
        assert n_params(archc.build(SPEC, **cfg)) == n_params(RefRecurrentTransformer(**cfg)) == expected


def test_train_step():
    torch.manual_seed(0)
    m = archc.build(SPEC, **CFG)
    check_train_step(m, tokens(T=T_LEN))
