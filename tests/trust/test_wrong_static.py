"""Issue 8 item 3, the compile-time part of "silent wrong answers": what a spec means
must be what the built module computes and what `archc check`/`archc.cost` report.

Each case is checked against an expectation computed here independently of archc: plain
torch with the weights copied across by name, or a count made by hand.
"""

from __future__ import annotations

import pytest
import torch

import archc

VOCAB, D = 64, 16

HEAD = f"model r(vocab: int = {VOCAB}, d: int = {D})\n" \
       "let emb = embed(vocab=vocab, dim=d)\nx = emb(tokens)\n"
TAIL = "return lm_head(x, tied=emb)\n"
LIN = "x = x + linear(x, out=d)"
SCALED = "x = x + scale(linear(x, out=d), by=i + 1)"

# ----------------------------------------------------------------------------- loop indices
# (nest, outer label, inner label, outer count, inner count, inner scale):
# `nest` wraps a body in two regions; the reference runs outer x inner distinct linears in
# order, each scaled by `inner scale(b)` where b is the inner index.
NESTS = [
    ("loop 3 {{ for i in 0..2 {{ {body} }} }}", "loop", "layers", 3, 2),
    ("loop 2 {{ for i in 0..3 {{ {body} }} }}", "loop", "layers", 2, 3),
    ("for i in 0..2 {{ for i in 0..3 {{ {body} }} }}", "layers", "layers", 2, 3),
    ("loop i in 2 {{ for i in 0..3 {{ {body} }} }}", "loop", "layers", 2, 3),
    ("for i in 0..2 {{ loop 3 {{ {body} }} }}", "layers", "loop", 2, 3),
    ("for i in 0..2 {{ loop i in 3 {{ {body} }} }}", "layers", "loop", 2, 3),
    ("loop i in 2 {{ loop i in 3 {{ {body} }} }}", "loop", "loop", 2, 3),
    ("loop 2 {{ loop 3 {{ {body} }} }}", "loop", "loop", 2, 3),
]


def _nested_reference(model, tokens, outer, inner, labels, scaled):
    """outer x inner distinct linears applied in order, weights read by name."""
    p = dict(model.named_parameters())
    emb = p["emb.weight"]
    x = emb[tokens]
    for a in range(outer):
        for b in range(inner):
            w = p[f"{labels[0]}.{a}.{labels[1]}.{b}.weight"]
            y = x @ w.T
            x = x + (b + 1) * y if scaled else x + y
    return x @ emb.T


@pytest.mark.parametrize("scaled", [False, True], ids=["plain", "inner-index"])
@pytest.mark.parametrize("nest,outer_label,inner_label,outer,inner", NESTS,
                         ids=[f"nest{k}" for k in range(len(NESTS))])
def test_nested_loop_indices_are_not_shadowed(nest, outer_label, inner_label, outer, inner,
                                               scaled):
    """An inner region's variable never takes an outer loop's index: every one of the
    outer x inner linears runs, in order (the unnamed `loop 3 { for i in 0..2 }` ran 2 of
    6 and with the inner count larger failed in `share`)."""
    if scaled and "i in" not in nest.split("{{")[1]:
        pytest.skip("the inner region has no `i` to read")
    body = SCALED if scaled else LIN
    spec = HEAD + nest.format(body=body) + "\n" + TAIL
    torch.manual_seed(0)
    m = archc.build(spec)
    tokens = torch.randint(0, VOCAB, (2, 5))
    out = m(tokens)
    out.sum().backward()
    unused = [n for n, p in m.named_parameters() if p.grad is None]
    assert not unused, f"weights never used: {unused}"
    assert len(list(m.parameters())) == 1 + outer * inner
    with torch.no_grad():
        ref = _nested_reference(m, tokens, outer, inner, (outer_label, inner_label), scaled)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    built = sum(p.numel() for p in m.parameters())
    assert archc.cost(spec, seq=5).params == built


def test_unnamed_loop_index_is_not_the_spec_i():
    """An unnamed loop has no index the spec can read: `i` in its body is an unknown
    name (a located error), not silently some loop's counter."""
    spec = HEAD + "loop 3 { x = scale(x, by=i) }\n" + TAIL
    with pytest.raises(archc.ArchcError) as e:
        archc.load(spec)
    assert e.value.span is not None and e.value.span.line == 4
