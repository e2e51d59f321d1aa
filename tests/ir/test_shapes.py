"""Shape rules in the op table: the verifier holds every node to its prim's rule after
every pass, so a pass that gets a type wrong is caught where it happens."""

import pytest

import archc
from archc.ir import Graph, TensorType
from archc.ops.prims import PRIMS
from archc.verify import verify

SPEC = """model m(vocab: int = 32, d: int = 16)
let emb = embed(vocab=vocab, dim=d)
x = emb(tokens)
x = x + attention(rmsnorm(x), heads=4)
return lm_head(x, tied=emb)
"""


def _checked() -> set[str]:
    return {name for name, p in PRIMS.items() if p.shape or p.elementwise or p.row_local}


def test_the_common_prims_have_a_shape_rule():
    assert {"linear", "tied_linear", "heads", "merge_heads", "attend", "concat", "split",
            "add", "mul", "silu", "rmsnorm", "rope"} <= _checked()


def _broken(op: str, bad: TensorType):
    """The model's program with the first `op` node typed `bad`."""
    program = archc.load(SPEC).program
    block = program.model
    graph = Graph(block.graph.inputs)
    done = False
    for node in block.graph.nodes:
        if node.op == op and not done:
            node = node.model_copy(update={"types": (bad,)})
            done = True
        graph.add(node)
    graph.outputs, graph.names = list(block.graph.outputs), dict(block.graph.names)
    classes = {**program.classes, block.cls: block.model_copy(update={"graph": graph})}
    return program.model_copy(update={"classes": classes})


@pytest.mark.parametrize("op, bad", [
    ("linear", TensorType(shape=("B", "T", 17))),          # the leaf's out is 16
    ("heads", TensorType(shape=("B", 2, "T", 8))),          # n=4 heads
    ("merge_heads", TensorType(shape=("B", "T", 8))),
    ("attend", TensorType(shape=("B", 4, "T", 5))),
    ("add", TensorType(shape=("B", "T", 15))),
    ("rmsnorm", TensorType(shape=("B", 1, 16))),
    ("tied_linear", TensorType(shape=("B", "T", 16))),     # vocab is 32
])
def test_a_node_off_its_rule_is_an_internal_error(op, bad):
    verify(archc.load(SPEC).program)  # the unbroken program passes
    with pytest.raises(archc.ArchcError) as e:
        verify(_broken(op, bad), "a test pass")
    assert e.value.code == "A900"
    assert "after a test pass" in e.value.message and "shape rule" in e.value.message
