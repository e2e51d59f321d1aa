"""Budgets that hold and compile time that scales (issue 8, item 5).

Speed is measured in bench/check_scaling.py, not asserted here. These tests count work
where they can (calls of the function that used to be re-run), and otherwise catch an
exponential or quadratic stage with a coarse alarm (20 s for work that now takes well
under a second and took minutes before).
"""

from __future__ import annotations

import signal
from contextlib import contextmanager

import pytest

import archc
from archc.codegen.torch import modules
from archc.ir import Graph, Ref
from archc.passes import dce, roll

HEAD = "model m(d: int = 8, vocab: int = 16)\nx = embed(tokens, vocab=vocab, dim=d)\n"
TAIL = "return lm_head(x, vocab=vocab)\n"
STEP = "x = x + linear(x, out=d)\n"


@contextmanager
def alarm(seconds: int):
    """Fail instead of hanging when a stage is exponential again."""
    def expired(signum, frame):
        raise TimeoutError(f"took more than {seconds} s")

    before = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, before)


def nested(counts: list[int], body: str = STEP) -> str:
    head = "".join(f"for a{k} in 0..{n} {{\n" for k, n in enumerate(counts))
    return HEAD + head + body + "}\n" * len(counts) + TAIL


# ----------------------------------------------------------------------------- budget


def refusal(text: str, budget=None) -> archc.ArchcError:
    with pytest.raises(archc.ArchcError) as e:
        archc.load(text, budget=budget)
    return e.value


def test_nested_stacks_count_at_full_size():
    # 1000 x 1000 iterations of 2 ops: passed the 200,000-op budget and took minutes
    with alarm(20):
        err = refusal(nested([1000, 1000]))
    assert err.code == "A040"
    assert "2,001,001 ops" in err.message and "200,000" in err.message
    assert err.span is not None and err.span.line == 3  # the outer `for`
    assert "--max-nodes" in err.hint and "archc.Budget(max_nodes=" in err.hint


def test_a_loop_in_a_stack_and_a_stack_in_a_block_count_at_full_size():
    loop_in_stack = HEAD + "for a in 0..1000 {\n  loop 1000 { x = x + linear(x, out=d) }\n}\n" + TAIL
    assert refusal(loop_in_stack).code == "A040"
    block = ("block deep(x) {\n  for i in 0..1000 { x = x + linear(x, out=d) }\n"
             "  return x\n}\n")
    calls = HEAD.replace("\n", "\n" + block, 1) + "for j in 0..1000 { x = deep(x) }\n" + TAIL
    assert refusal(calls).code == "A040"
    repeated = HEAD.replace("\n", "\n" + block, 1) + "x = deep(x)\n" * 150 + TAIL
    err = refusal(repeated)
    assert err.code == "A040" and "call of `deep`" in err.message


def test_a_stack_built_iteration_by_iteration_is_refused_by_the_work_budget():
    """A body that reads its index is elaborated once per iteration: 300 x 300 of them
    took 31 s to reach the size budget; the work budget refuses it after 20,000 ops."""
    body = "x = x + linear(x, out=d) * (a0 + a1)\n"
    with alarm(20):
        err = refusal(nested([300, 300], body))
    assert err.code == "A040" and "work budget" in err.message
    assert "max_built" in err.hint and err.span.line == 5
    small = nested([3, 3], body)
    assert archc.load(small, budget=archc.Budget(max_built=30)).name == "m"
    assert refusal(small, archc.Budget(max_built=20)).code == "A040"


def test_spec_text_past_the_budget_is_refused_before_parsing():
    """Parsing is linear but not free (about 4,000 statements a second): a spec of 10,000
    copied lines would take seconds to check, so it is refused at once, located, unless
    the budget is raised."""
    text = HEAD + STEP * 10_000 + TAIL
    with alarm(5):
        err = refusal(text)
    assert err.code == "A040" and err.span.line == 1 and "max_source_bytes" in err.hint
    raised = archc.Budget(max_source_bytes=len(text) + 1)
    assert archc.load(HEAD + STEP * 3 + TAIL, budget=raised).name == "m"


def test_the_budget_counts_each_op_once_and_can_be_raised():
    # 40 x 40 iterations of 3 ops, spliced (the body reads its indices), plus embed and
    # head: 4,802 ops, each counted once (a spliced iteration was counted again)
    text = nested([40, 40], "x = x + linear(x, out=d) * (a0 + a1)\n")
    archc.load(text, budget=archc.Budget(max_nodes=4_802))
    assert refusal(text, archc.Budget(max_nodes=4_801)).code == "A040"
    archc.load(nested([1000, 1000]), budget=archc.Budget(max_nodes=3_000_000))


# ----------------------------------------------------------------------------- memory


HUGE = ("model huge(d: int = 1000000, vocab: int = 2)\n"
        "x = embed(tokens, vocab=vocab, dim=d)\n"
        "x = linear(x, out=d)\n"          # 10^12 weights: 4 TB in float32
        "return lm_head(x, vocab=vocab)\n")


def test_a_build_larger_than_memory_is_an_error_before_allocation(monkeypatch):
    spec = archc.load(HUGE, budget=archc.Budget(max_params=10**13))

    def no_codegen(program):
        raise AssertionError("codegen ran: the memory check must come first")

    monkeypatch.setattr("archc.codegen.torch.generate", no_codegen)
    with alarm(20), pytest.raises(archc.ArchcError) as e:
        archc.build(spec)
    err = e.value
    assert err.code == "A041"
    params = 10**12 + 4 * 10**6
    assert f"{params * 4:,} bytes" in err.message and f"{params:,} parameters" in err.message
    assert err.span is not None and err.span.line == 1
    assert "max_bytes" in err.hint


def test_the_memory_limit_can_be_set():
    small = HEAD + STEP + TAIL
    with pytest.raises(archc.ArchcError) as e:
        archc.build(archc.load(small, budget=archc.Budget(max_bytes=1000)))
    assert e.value.code == "A041" and "1,000 bytes" in e.value.message
    archc.build(archc.load(small, budget=archc.Budget(max_bytes=10**6)))


# ----------------------------------------------------------------------------- codegen


def test_codegen_of_nested_one_iteration_fors_is_linear(monkeypatch):
    calls = []
    real = modules.module_expr

    def counted(m, indent, ctx):
        calls.append(1)
        return real(m, indent, ctx)

    monkeypatch.setattr(modules, "module_expr", counted)  # its recursion reads the global
    archc.compile_source(nested([1] * 12))
    assert len(calls) < 100  # one per module of the tree; 2^12 when it was exponential


def test_the_deepest_nesting_allowed_compiles():
    """As deep as archc/limits.py lets loops nest (Python allows 20 nested blocks); 20
    levels took 30 s when each level built its stack's expression twice."""
    from archc.limits import MAX_LOOP_NESTING

    with alarm(20):
        source = archc.compile_source(nested([1] * MAX_LOOP_NESTING))
    compile(source, "<generated>", "exec")


# ----------------------------------------------------------------------------- passes


def chain(n: int, shared: bool = False):
    """A root class of n linears in a row (one shared weight or n distinct ones), built
    directly as IR: elaborating a spec that large costs more than the pass under test."""
    base = archc.load(HEAD + STEP + TAIL).program
    block = base.classes[base.root]
    embed_node, lin, _add, head = block.graph.nodes
    leaf = dict(block.modules)["linear"]
    graph = Graph(block.graph.inputs)
    graph.add(embed_node)
    prev = embed_node.outs[0]
    modules = [("embed", dict(block.modules)["embed"])]
    for k in range(n):
        name = "core" if shared else f"linear_{k}"
        out = f"%{100 + k}"
        graph.add(lin.model_copy(update={"outs": (out,), "inputs": (prev,),
                                          "ref": Ref(path=((name, None),))}))
        if not shared or k == 0:
            modules.append((name, leaf))
        prev = out
    graph.add(head.model_copy(update={"inputs": (prev,)}))
    graph.outputs = list(head.outs)
    modules.append(("lm_head", dict(block.modules)["lm_head"]))
    block = block.model_copy(update={"graph": graph, "modules": tuple(modules)})
    return base.model_copy(update={"classes": {base.root: block}})


def test_dce_is_near_linear():
    program = chain(20_000)
    with alarm(20):  # over 240 s when each module filtered every used path
        out = dce.dce(program)
    root = out.classes[out.root]
    assert len(root.modules) == 20_002 and len(root.graph) == 20_002


def test_roll_looks_at_each_node_a_bounded_number_of_times(monkeypatch):
    calls = []
    real = roll.node_signature

    def counted(node):
        calls.append(1)
        return real(node)

    monkeypatch.setattr(roll, "node_signature", counted)
    program = chain(600)
    out = roll.roll(program)
    assert len(out.classes[out.root].graph) == 602  # distinct weights: nothing rolls
    assert len(calls) <= 3 * 602  # once per node; ~N^2/4 when every window was tried


def test_roll_folds_a_long_run_into_one_loop():
    out = roll.roll(chain(2_000, shared=True))
    nodes = out.classes[out.root].graph.nodes
    loops = [n for n in nodes if n.op == "loop"]
    assert len(nodes) == 3 and len(loops) == 1
    assert loops[0].loop.count.value == 2_000
