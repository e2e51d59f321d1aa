"""specs/relaxed_recursive.arch against a hand-written Relaxed Recursive Transformer
(Bae et al. 2024): K shared Llama-style layers looped N/K times; looped position l uses
shared slot l mod K with its effective weights W_l = W'_{l mod K} + B_l A_l for every
linear of the layer. The reference merges each LoRA into the weight (the paper's form)
instead of adding a low-rank side branch."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import archc
from refs import (RMSNorm, SwiGLU, Attention, WeightSource, load_exact, randomize_,
                  assert_close, n_params, tokens, check_train_step, heads, unheads,
                  rope_tables, apply_rope, causal_attention)

SPEC = "specs/relaxed_recursive.arch"
CONFIGS = [
    dict(d=32, heads=4, kv_heads=2, hidden=48, n=6, k=2, rank=4),
    dict(d=32, heads=4, kv_heads=1, hidden=40, n=6, k=3, rank=2),
    dict(d=32, heads=2, kv_heads=2, hidden=48, n=4, k=1, rank=3),
]
IDS = ["n6k2r4", "n6k3r2-mqa", "n4k1r3-mha"]
LINEARS = ["wq", "wk", "wv", "wo", "w1", "w3", "w2"]
ARCHC_LINEAR = {"wq": "attn.q", "wk": "attn.k", "wv": "attn.v", "wo": "attn.o",
                "w1": "mlp.gate", "w3": "mlp.up", "w2": "mlp.down"}
ARCHC_LORA = {"wq": "attn_q", "wk": "attn_k", "wv": "attn_v", "wo": "attn_o",
              "w1": "mlp_gate", "w3": "mlp_up", "w2": "mlp_down"}


class LoRAPair(nn.Module):
    def __init__(self, d_in, d_out, rank):
        super().__init__()
        self.A = nn.Parameter(torch.zeros(rank, d_in))
        self.B = nn.Parameter(torch.zeros(d_out, rank))

    def delta(self):
        return self.B @ self.A   # [d_out, d_in]; scale alpha/rank = 1


class SharedLayer(nn.Module):
    def __init__(self, d, n_heads, n_kv_heads, hidden):
        super().__init__()
        self.attention_norm = RMSNorm(d)
        self.attention = Attention(d, n_heads, n_kv_heads)
        self.ffn_norm = RMSNorm(d)
        self.feed_forward = SwiGLU(d, hidden)

    def linears(self):
        a, f = self.attention, self.feed_forward
        return {"wq": a.wq, "wk": a.wk, "wv": a.wv, "wo": a.wo, "w1": f.w1, "w3": f.w3, "w2": f.w2}

    def forward(self, x, lora=None):
        W = {name: lin.weight + (lora[name].delta() if lora is not None else 0)
             for name, lin in self.linears().items()}
        a = self.attention
        h = self.attention_norm(x)
        cos, sin = rope_tables(x.shape[1], a.head_dim)
        q = apply_rope(heads(F.linear(h, W["wq"]), a.n_heads), cos, sin)
        k = apply_rope(heads(F.linear(h, W["wk"]), a.n_kv_heads), cos, sin)
        v = heads(F.linear(h, W["wv"]), a.n_kv_heads)
        x = x + F.linear(unheads(causal_attention(q, k, v)), W["wo"])
        h = self.ffn_norm(x)
        return x + F.linear(F.silu(F.linear(h, W["w1"])) * F.linear(h, W["w3"]), W["w2"])


class RefRRT(nn.Module):
    def __init__(self, vocab=256, d=64, heads=4, kv_heads=2, hidden=172, n=6, k=2, rank=4,
                 relaxed=True):
        super().__init__()
        self.n, self.k = n, k
        self.tok_embeddings = nn.Embedding(vocab, d)
        self.shared_layers = nn.ModuleList(SharedLayer(d, heads, kv_heads, hidden) for _ in range(k))
        self.norm = RMSNorm(d)
        if relaxed:
            dims = {name: (lin.in_features, lin.out_features)
                    for name, lin in self.shared_layers[0].linears().items()}
            self.lora = nn.ModuleList(
                nn.ModuleDict({name: LoRAPair(*dims[name], rank) for name in LINEARS})
                for _ in range(n))
        else:
            self.lora = None

    def forward(self, tokens):
        x = self.tok_embeddings(tokens)
        for l in range(self.n):                  # looped position l (0-based)
            layer = self.shared_layers[l % self.k]
            x = layer(x, self.lora[l] if self.lora is not None else None)
        return self.norm(x) @ self.tok_embeddings.weight.T


def copy_weights(m, ref, cfg, relaxed=True):
    n, k = cfg["n"], cfg["k"]
    src = WeightSource(m)
    w = {"tok_embeddings.weight": src["emb.weight"], "norm.weight": src["rmsnorm.weight"]}
    for b in range(k):
        r, a = f"shared_layers.{b}.", f"shared.{b}."
        w[r + "attention_norm.weight"] = src[a + "rmsnorm.weight"]
        w[r + "ffn_norm.weight"] = src[a + "rmsnorm_1.weight"]
        for name in LINEARS:
            sub = "attention" if name in ("wq", "wk", "wv", "wo") else "feed_forward"
            w[r + f"{sub}.{name}.weight"] = src[a + ARCHC_LINEAR[name] + ".weight"]
    if relaxed:
        for l in range(n):
            # looped position l = j*k + b  <->  archc shared[b].lora[j]
            b, j = l % k, l // k
            for name in LINEARS:
                for ab in ("A", "B"):
                    w[f"lora.{l}.{name}.{ab}"] = src[f"shared.{b}.lora.{j}.{ARCHC_LORA[name]}.{ab}"]
    else:
        # The strict model has no adapters: every archc LoRA must be inert (B == 0); its A
        # is then irrelevant. Reading them here marks them as accounted for.
        for name in list(src.params):
            if ".lora." in name and name.endswith(".B"):
                assert src[name].abs().max() == 0, f"{name}: strict comparison needs LoRA B = 0"
            elif ".lora." in name:
                src[name]
    load_exact(ref, w, src)


def lora_formula(cfg, vocab=256):
    d, H, Hkv, hidden, n, k, rank = (cfg[x] for x in ("d", "heads", "kv_heads", "hidden", "n", "k", "rank"))
    dh = d // H
    shapes = [(d, H * dh), (d, Hkv * dh), (d, Hkv * dh), (H * dh, d),
              (d, hidden), (d, hidden), (hidden, d)]
    block = sum(i * o for i, o in shapes) + 2 * d
    lora = n * sum(rank * (i + o) for i, o in shapes)
    return k * block + vocab * d + d + lora


@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
def test_matches_reference(cfg):
    m = archc.build(SPEC, **cfg)
    randomize_(m, seed=1)
    ref = RefRRT(**cfg)
    copy_weights(m, ref, cfg)
    x = tokens()
    with torch.no_grad():
        assert_close(m(x), ref(x), f"relaxed recursive {cfg}")


@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
def test_zero_B_equals_strict_recursive(cfg):
    m = archc.build(SPEC, **cfg)
    randomize_(m, seed=2)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if ".lora." in name and name.endswith(".B"):
                p.zero_()
    strict = RefRRT(**cfg, relaxed=False)
    copy_weights(m, strict, cfg, relaxed=False)
    x = tokens()
    with torch.no_grad():
        assert_close(m(x), strict(x), "B = 0 vs strict recursive model")
    # and the LoRA really matters once B is non-zero
    randomize_(m, seed=2)
    with torch.no_grad():
        diff = (m(x) - strict(x)).abs().max().item()
    assert diff > 1e-3, f"non-zero LoRA B barely changes the output (max diff {diff:.2e})"


def test_default_init_is_strict_recursive():
    """From-scratch init: B starts at zero, so the built model equals the strict one."""
    cfg = CONFIGS[0]
    m = archc.build(SPEC, **cfg)
    Bs = [n for n, p in m.named_parameters() if n.endswith(".B")]
    assert Bs and all(dict(m.named_parameters())[n].abs().max() == 0 for n in Bs), \
        "LoRA B should start at zero"
    strict = RefRRT(**cfg, relaxed=False)
    copy_weights(m, strict, cfg, relaxed=False)
    x = tokens()
    with torch.no_grad():
        assert_close(m(x), strict(x), "default init vs strict recursive model")


@pytest.mark.parametrize("cfg", CONFIGS + [dict(d=64, heads=4, kv_heads=2, hidden=172, n=6, k=2, rank=4)],
                         ids=IDS + ["defaults"])
def test_param_count(cfg):
    m = archc.build(SPEC, **cfg)
    expected = lora_formula(cfg)
    assert n_params(m) == expected, f"{cfg}: archc has {n_params(m)} parameters, formula {expected}"
    assert n_params(RefRRT(**cfg)) == expected, "reference disagrees with the formula"
    lora = sum(p.numel() for nm, p in m.named_parameters() if ".lora." in nm)
    strict = n_params(RefRRT(**cfg, relaxed=False))
    assert lora == expected - strict, f"LoRA parameters {lora} vs formula {expected - strict}"


def test_train_step():
    cfg = CONFIGS[0]
    torch.manual_seed(0)
    m = archc.build(SPEC, **cfg)
    changed = check_train_step(m, tokens())
    names = [n for n, _ in m.named_parameters()]
    Bs = [n for n in names if n.endswith(".B")]
    assert set(Bs) <= changed, f"LoRA B that did not move: {sorted(set(Bs) - changed)}"
    base = [n for n in names if ".lora." not in n]
    assert set(base) <= changed, f"shared weights that did not move: {sorted(set(base) - changed)}"
