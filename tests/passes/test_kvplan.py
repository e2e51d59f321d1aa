"""kvplan: slots for the attentions that keep their own K/V in inference, and the layout."""

from __future__ import annotations

import archc
from archc.analysis.kv import planned_bytes_per_token, unplanned_bytes_per_token
from archc.api import compile_program
from archc.ir import format_program, walk


def planned(spec: str, **params):
    return compile_program(archc.load(spec, **params))


def slots(program) -> list:
    return [n.annotation("slot") for block in program.classes.values() for n in walk(block.graph)
            if n.annotation("slot") is not None]


def test_each_layer_of_a_stack_gets_its_own_slot_range():
    p = planned("specs/transformer.arch", depth=3)
    assert p.kv_layout == ((2, 16),) * 3
    text = format_program(p)
    # the layer class numbers its one cache 0 relative to the slot its caller passes...
    assert "kv_cache{slot=(0, ())}" in text
    # ...and the stack passes base i, one slot per layer
    assert "slot=(0, (('i', 1),))" in text


def test_layers_that_read_another_layers_kv_keep_no_cache():
    base = planned("specs/transformer.arch")
    shared = planned("specs/stochastic_kv.arch")
    assert len(shared.kv_layout) * 2 == len(base.kv_layout)
    assert planned_bytes_per_token(shared) * 2 == planned_bytes_per_token(base)
    assert unplanned_bytes_per_token(shared) == unplanned_bytes_per_token(base)


def test_loop_iterations_get_consecutive_ranges():
    p = planned("specs/huginn.arch")
    # prelude 2 + core 4 layers x 64 iterations (the loop's max) + coda 2
    assert len(p.kv_layout) == 2 + 4 * 64 + 2
    core_call = next(n for n in walk(p.model.graph)
                     if n.op == "call" and n.call.cls == "Recur")
    assert core_call.annotation("slot") == (2, (("it", 4),))  # after the prelude's 2, 4 per step
    coda = [n for n in walk(p.model.graph) if n.op == "call" and n.ref.path[0][0] == "coda"]
    assert coda[0].annotation("slot") == (2 + 4 * 64, (("i", 1),))


def test_own_output_attention_keeps_one_slot_per_layer():
    p = planned("specs/recurrent_transformer.arch")
    assert p.kv_layout == ((4, 16), (4, 16))


def test_new_cache_allocates_the_plan():
    m = archc.build("specs/stochastic_kv.arch").eval()
    c = m.new_cache(batch=2, max_len=10)
    p = planned("specs/stochastic_kv.arch")
    assert c.nbytes == planned_bytes_per_token(p) * 2 * 10
