"""A head loop reruns its attention's projections from their weights alone, so lora on
that attention's linears would make the loop compute something other than the adapted
attention (train-eval and reparam disagreed: bench/fuzz.py --seed 13, cases 5741, 19711).
The combination is an archc error; lora on other linears of the block stays allowed."""

import pytest

import archc

SPEC = """model m(vocab: int = 24, d: int = 12)

block blk(x) {{
  let norm = rmsnorm()
  let attn = attention(heads=2)
  let looped = head_loop(attn=attn, heads=1)
  a = attn(norm(x))
  o = a.heads
  loop 1 {{
    a, o = looped(norm(x + a), a, o)
  }}
  x = x + a
  x = x + swiglu(x, hidden=8)
  return x
}}

let emb = embed(vocab=vocab, dim=d)
x = emb(tokens)
let core = blk()
loop 2 {{
  x = core(x) with lora(rank=1{targets})
}}
return lm_head(x, tied=emb)
"""


@pytest.mark.parametrize("targets", ["", ', targets=["q"]', ', targets=["attn.v", "gate"]'])
def test_lora_on_a_looped_attention_is_refused(targets):
    with pytest.raises(archc.ArchcError) as e:
        archc.load(SPEC.format(targets=targets))
    assert e.value.code == "A034" and "head loop" in e.value.message
    assert e.value.span is not None and e.value.span.line == 10


def test_lora_on_other_linears_of_the_block_is_fine():
    import torch

    text = SPEC.format(targets=', targets=["gate", "down"]')
    model = archc.build(text).eval()
    deploy = archc.reparam(model)
    tokens = torch.randint(0, 24, (2, 5))
    with torch.no_grad():
        assert torch.allclose(model(tokens), deploy(tokens), atol=1e-5)
