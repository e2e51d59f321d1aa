"""Every activation of the op table (`Prim.activation`) is a spec op that computes its
torch function, is priced, fuses and merges under CSE: what adding one (e.g. softplus)
must give, from one op-table line and one lowering line per backend."""

import pytest
import torch
import torch.nn.functional as F

import archc
from archc.analysis.cost import cost_of
from archc.codegen import backend as backends
from archc.ops import OPS, PRIMS

ACTIVATIONS = sorted(name for name, prim in PRIMS.items() if prim.activation)
TORCH = {"silu": F.silu, "gelu": F.gelu, "relu": F.relu, "sigmoid": torch.sigmoid,
         "tanh": torch.tanh, "softplus": F.softplus}

SPEC = """model m(vocab: int = 32, d: int = 8)
let emb = embed(vocab=vocab, dim=d)
x = emb(tokens)
y = {act}(x) + {act}(x)
return lm_head(y, tied=emb)
"""


def test_the_table_has_the_activations():
    assert {"silu", "gelu", "relu", "sigmoid", "tanh", "softplus"} <= set(ACTIVATIONS)
    assert set(TORCH) == set(ACTIVATIONS), "add the torch reference of a new activation"


@pytest.mark.parametrize("act", ACTIVATIONS)
def test_activation_end_to_end(act):
    assert act in OPS  # a spec op, from the op table alone
    text = SPEC.format(act=act)
    torch.manual_seed(0)
    m = archc.build(text)
    tokens = torch.randint(0, 32, (2, 5))
    x = m.emb(tokens)
    want = F.linear(2 * TORCH[act](x), m.emb.weight)
    assert torch.allclose(m(tokens), want, atol=1e-6)
    program = archc.api.compile_program(archc.load(text))
    ops = [n.op for n in program.model.graph.nodes]
    assert ops.count(act) == 1, "CSE merges the two applications (the prim is pure)"
    fused = [n for n in program.model.graph.nodes if n.op in (act, "add")]
    assert len({n.annotation("fusion") for n in fused} - {None}) == 1, "act + add fuse as one region"
    assert cost_of(archc.load(text).program).vector_flops_per_token > 0
    for name in backends.names():
        b = backends.get(name)
        assert b.lowers(act) or not b.complete
