"""The front end as a package (archc/frontend/) and the op library split by family
(archc/ops/): what the split must keep, and the input checks it merged into one helper."""

from __future__ import annotations

import pathlib

import pytest

import archc
from archc.errors import ArchcError
from archc.ops import ADAPTERS, OPS, library

ROOT = pathlib.Path(__file__).resolve().parents[2]
HEAD = "model m(d: int = 8)\nx = embed(tokens, vocab=8, dim=d)\n"
TAIL = "return lm_head(x, vocab=8)\n"

# Every spec-level op; a family module that is no longer imported loses its ops here.
ALL_OPS = {
    "embed", "lm_head", "rmsnorm", "layernorm", "linear", "swiglu", "mlp", "topk",
    "attention", "head_loop", "linear_attention", "layerscale", "scalar", "gated_mix",
    "hyper_read", "hyper_write", "streams", "stream_merge", "delta", "drop_path", "gate",
    "moe", "width_route", "group_fuse", "partition_norm", "rotate", "horn", "batchnorm",
    "repbn", "sigma_linear", "ds_linear", "scale", "add", "sum", "mul", "leaky_relu",
    "silu", "gelu", "relu", "sigmoid", "tanh", "softplus", "concat", "split", "init_state",
}


def test_the_registry_holds_every_op_once_split_by_family():
    assert set(OPS) == ALL_OPS
    assert set(ADAPTERS) == {"lora", "untie"}
    assert library.OPS is OPS  # tests and tools patch ops through archc.ops.library


def test_the_public_budget_is_the_front_ends():
    from archc.frontend import Budget, elaborate  # noqa: F401

    assert archc.Budget is Budget
    assert not (ROOT / "archc" / "elaborate.py").exists()  # moved, no shim left behind


@pytest.mark.parametrize("folder", ["archc/frontend", "archc/ops"])
def test_each_module_is_small_and_says_why_it_exists(folder):
    for path in sorted((ROOT / folder).glob("*.py")):
        text = path.read_text()
        assert len(text.splitlines()) <= 800, path
        assert text.startswith('"""'), f"{path} has no module docstring"


def _error(body: str) -> ArchcError:
    with pytest.raises(ArchcError) as err:
        archc.load(HEAD + body + TAIL)
    return err.value


def test_token_ids_are_refused_at_the_argument():
    err = _error("y = rmsnorm(tokens)\n")
    assert err.code == "A031" and "`rmsnorm` takes activations" in err.message
    assert (err.span.line, err.span.col) == (3, 13)


def test_token_ids_with_a_static_positional_are_refused_at_the_call():
    # The inputs do not line up with the arguments (0.5 is an option): the whole call.
    err = _error("y = scale(tokens, 0.5)\n")
    assert err.code == "A031" and "of token ids" in err.message
    assert (err.span.line, err.span.col) == (3, 5)


def test_a_per_head_value_is_refused_at_the_argument():
    err = _error("a = attention(x, heads=2)\ny = linear(a.q, out=8)\n")
    assert err.code == "A013" and "takes activations [B, T, d]" in err.message
    assert (err.span.line, err.span.col) == (4, 12)
