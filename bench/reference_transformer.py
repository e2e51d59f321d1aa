"""Hand-written PyTorch twin of specs/transformer.arch, for benchmarking archc's output.

Architecture (identical to transformer.arch): token embedding -> `depth` pre-norm blocks
    x = x + attention(rmsnorm(x));  x = x + swiglu(rmsnorm(x))
-> final rmsnorm -> LM head tied to the embedding.

Written the way one writes a Llama/nanoGPT-style model by hand, in plain torch (no archc
import at module level, no archc.runtime):
  * nn.RMSNorm(d, eps=1e-6)
  * RoPE, rotate-half convention, theta 1e4; cos/sin tables precomputed once as
    non-persistent buffers, sliced once per forward and passed to every layer
  * GQA through F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
  * SwiGLU: w2(silu(w1 x) * w3 x)
  * tied head: F.linear(h, tok_embeddings.weight)

`load_from_archc(ref, archc_module)` copies the compiled module's weights by name (an
explicit name map; any unmatched or mis-shaped tensor raises).

Run directly to check that the two models agree:
    .venv/bin/python bench/reference_transformer.py
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
SPEC = str(ROOT / "specs" / "transformer.arch")


@dataclass
class ModelArgs:
    vocab: int = 256
    d: int = 64
    depth: int = 4
    heads: int = 4
    kv_heads: int = 2
    hidden: int = 172
    rope_theta: float = 10000.0
    max_seq_len: int = 4096
    norm_eps: float = 1e-6


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [B, H, T, dh]; cos, sin: [T, dh]."""
    return x * cos + rotate_half(x) * sin


class Attention(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        assert args.d % args.heads == 0 and args.heads % args.kv_heads == 0
        self.n_heads = args.heads
        self.n_kv_heads = args.kv_heads
        self.head_dim = args.d // args.heads
        self.wq = nn.Linear(args.d, args.heads * self.head_dim, bias=False)
        self.wk = nn.Linear(args.d, args.kv_heads * self.head_dim, bias=False)
        self.wv = nn.Linear(args.d, args.kv_heads * self.head_dim, bias=False)
        self.wo = nn.Linear(args.heads * self.head_dim, args.d, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.wq(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.wk(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.wv(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q = apply_rotary(q, cos, sin)
        k = apply_rotary(k, cos, sin)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        y = y.transpose(1, 2).contiguous().view(B, T, self.n_heads * self.head_dim)
        return self.wo(y)


class FeedForward(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.w1 = nn.Linear(args.d, args.hidden, bias=False)  # gate
        self.w3 = nn.Linear(args.d, args.hidden, bias=False)  # up
        self.w2 = nn.Linear(args.hidden, args.d, bias=False)  # down

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class TransformerBlock(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.attention_norm = nn.RMSNorm(args.d, eps=args.norm_eps)
        self.attention = Attention(args)
        self.ffn_norm = nn.RMSNorm(args.d, eps=args.norm_eps)
        self.feed_forward = FeedForward(args)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.attention_norm(x), cos, sin)
        x = x + self.feed_forward(self.ffn_norm(x))
        return x


class Transformer(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.tok_embeddings = nn.Embedding(args.vocab, args.d)
        self.layers = nn.ModuleList(TransformerBlock(args) for _ in range(args.depth))
        self.norm = nn.RMSNorm(args.d, eps=args.norm_eps)
        cos, sin = self._rope_tables(args.max_seq_len)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    def _rope_tables(self, n: int, device=None):
        hd = self.args.d // self.args.heads
        inv_freq = 1.0 / (self.args.rope_theta
                          ** (torch.arange(0, hd, 2, dtype=torch.float32, device=device) / hd))
        t = torch.arange(n, dtype=torch.float32, device=device)
        freqs = torch.outer(t, inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos(), emb.sin()

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        T = tokens.shape[1]
        if T <= self.rope_cos.shape[0]:
            cos, sin = self.rope_cos[:T], self.rope_sin[:T]
        else:
            cos, sin = self._rope_tables(T, device=tokens.device)
        h = self.tok_embeddings(tokens)
        for layer in self.layers:
            h = layer(h, cos, sin)
        h = self.norm(h)
        return F.linear(h, self.tok_embeddings.weight)


# ------------------------------------------------------------------------- weights

def archc_name_map(depth: int) -> dict[str, str]:
    """reference parameter name -> archc module parameter name."""
    m = {"tok_embeddings.weight": "emb.weight", "norm.weight": "rmsnorm.weight"}
    for i in range(depth):
        r = a = f"layers.{i}."
        m[r + "attention_norm.weight"] = a + "rmsnorm.weight"
        m[r + "ffn_norm.weight"] = a + "rmsnorm_1.weight"
        for ours, theirs in (("wq", "q"), ("wk", "k"), ("wv", "v"), ("wo", "o")):
            m[r + f"attention.{ours}.weight"] = a + f"attn.{theirs}.weight"
        for ours, theirs in (("w1", "gate"), ("w3", "up"), ("w2", "down")):
            m[r + f"feed_forward.{ours}.weight"] = a + f"mlp.{theirs}.weight"
    return m


@torch.no_grad()
def load_from_archc(ref: Transformer, archc_module: nn.Module) -> Transformer:
    """Copy every parameter of the compiled module into `ref`, by name. Strict both ways."""
    src = dict(archc_module.named_parameters())
    dst = dict(ref.named_parameters())
    name_map = archc_name_map(ref.args.depth)
    missing_src = sorted(set(name_map.values()) - set(src))
    unused_src = sorted(set(src) - set(name_map.values()))
    missing_dst = sorted(set(dst) - set(name_map))
    if missing_src or unused_src or missing_dst:
        raise KeyError("archc/reference parameter names differ (did the codegen naming change?)\n"
                       f"  expected in archc module but absent: {missing_src[:8]}\n"
                       f"  archc parameters with no reference twin: {unused_src[:8]}\n"
                       f"  reference parameters not mapped: {missing_dst[:8]}")
    for ours, theirs in name_map.items():
        if dst[ours].shape != src[theirs].shape:
            raise ValueError(f"{ours} {tuple(dst[ours].shape)} != {theirs} {tuple(src[theirs].shape)}")
        dst[ours].copy_(src[theirs])
    return ref


def build_pair(vocab=256, d=64, depth=4, heads=4, kv_heads=2, hidden=172, seed=0):
    """(archc module, reference module) with identical weights."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    import archc

    torch.manual_seed(seed)
    params = dict(vocab=vocab, d=d, depth=depth, heads=heads, kv_heads=kv_heads, hidden=hidden)
    m = archc.build(SPEC, **params)
    with torch.no_grad():  # default init leaves norms at 1; randomize so they matter
        for name, p in m.named_parameters():
            if p.dim() == 1:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
    ref = load_from_archc(Transformer(ModelArgs(**params)), m)
    return m, ref


SIZE = dict(vocab=256, d=256, depth=8, heads=8, kv_heads=4, hidden=688)


def add_size_args(ap: argparse.ArgumentParser, **defaults: int) -> None:
    """--vocab --d --depth --heads --kv-heads --hidden: the transformer.arch size a bench
    compares at (SIZE unless `defaults` says otherwise)."""
    for name, value in dict(SIZE, **defaults).items():
        ap.add_argument("--" + name.replace("_", "-"), type=int, default=value)


def size_of(a: argparse.Namespace) -> dict:
    """The size params add_size_args parsed, as keywords of the spec."""
    return {name: getattr(a, name) for name in SIZE}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_size_args(ap, depth=4)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--atol", type=float, default=1e-5)
    a = ap.parse_args(argv)

    ok = True
    configs = [size_of(a),
               dict(vocab=256, d=64, depth=3, heads=4, kv_heads=1, hidden=172),   # MQA
               dict(vocab=256, d=64, depth=2, heads=4, kv_heads=4, hidden=96)]    # MHA
    for cfg in configs:
        m, ref = build_pair(**cfg)
        m.eval(), ref.eval()
        tok = torch.randint(0, cfg["vocab"], (a.batch, a.seq))
        with torch.no_grad():
            ya, yr = m(tok), ref(tok)
        fwd = (ya - yr).abs().max().item()
        # gradients too: same loss, backward through both
        m.train(), ref.train()
        tgt = torch.randint(0, cfg["vocab"], (a.batch, a.seq))
        for mod in (m, ref):
            mod.zero_grad(set_to_none=True)
            F.cross_entropy(mod(tok).flatten(0, 1), tgt.flatten()).backward()
        gm = dict(m.named_parameters())
        grad = max((gm[t].grad - p.grad).abs().max().item()
                   for o, t in archc_name_map(cfg["depth"]).items()
                   for p in [dict(ref.named_parameters())[o]])
        good = fwd <= a.atol and grad <= a.atol
        ok &= good
        print(f"{cfg}: max|logits diff| = {fwd:.3g}, max|grad diff| = {grad:.3g}  "
              f"(atol {a.atol:g}) {'OK' if good else 'MISMATCH'}")
    print("reference matches archc" if ok else "reference DOES NOT match archc")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
