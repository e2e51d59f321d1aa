"""Spec names never collide with the names of the generated code.

A spec may call a value, loop variable, param, label, instance, block or model anything the
grammar allows, including `start`, `self`, `F` or `range`, which the generated module uses
itself. Renaming an identifier must not change what the model computes: each test renames
identifiers on the lark parse tree (never by string replace), builds both specs with the
same weights and checks the logits are bit-identical.
"""

from __future__ import annotations

import os
import re
from functools import lru_cache
from pathlib import Path

import pytest
import torch

import archc
from archc.errors import ArchcError
from archc.syntax import _parser

# names the generated code uses: imports, self, builtins, locals, methods
GENERATED = ["start", "i", "rope", "cache", "slot", "self", "F", "rt", "torch", "nn", "math",
             "range", "int", "enumerate", "super", "x", "t", "h", "params", "layer", "halt",
             "s_prev", "new_cache", "set_step", "aux_loss", "forward", "Sandwich"]
# names a spec cannot take, each with one clear ArchcError: they name attributes of the
# built model (renaming the module would change its state-dict keys) or forward's keywords
REJECTED = {"instance": {"new_cache", "set_step", "aux_loss", "forward"},
            "label": {"new_cache", "set_step", "aux_loss", "forward"},
            "runtime param": {"cache", "self"}}

# names with a meaning in the language: `tokens` is the model's input, a run-time param
# `step` is the training step (set_step); renaming them changes the spec
LANGUAGE = {"tokens", "step"}
PER_NAME = 4  # categories each generated name is tried in

# ------------------------------------------------------------------------- renaming

_DECLARES = {  # parse-tree rule -> category of the NAMEs it declares
    "model": "model", "param": "param", "block": "block", "tensor_param": "value",
    "static_param": "block param", "assign": "value", "unpack": "value",
    "let": "instance", "for": "loop variable", "loop": "loop variable",
}


def _names(text: str) -> list[tuple[object, str, str]]:
    """Every NAME token of a spec with its role: a category it declares, "use" (a name
    read in an expression), "key" (a keyword argument or a named output: names of the
    callee, never renamed) or "field" (`a.h`)."""
    out = []

    def visit(tree, role=None):
        rule = tree.data
        kids = tree.children
        for k, child in enumerate(kids):
            if hasattr(child, "data"):
                visit(child)
                continue
            if child is None or child.type != "NAME":
                continue
            if rule == "name":
                out.append((child, "use", child.value))
            elif rule == "attr":
                out.append((child, "field", child.value))
            elif rule == "kw_arg" or rule == "return" and k > 0:
                out.append((child, "key", child.value))
            elif rule in ("for", "loop") and k > 0 and _after_as(tree, k):
                out.append((child, "label", child.value))
            elif rule in _DECLARES:
                out.append((child, _DECLARES[rule], child.value))
            else:
                out.append((child, "key", child.value))

    visit(_parser().parse(text))
    return out


def _after_as(tree, k: int) -> bool:
    """Is the k-th child of a for/loop its `as LABEL` (the NAME just before the body)?"""
    kids = tree.children
    return k + 1 < len(kids) and getattr(kids[k + 1], "data", None) == "body" and \
        any(getattr(c, "type", None) != "NAME" and c is not None for c in kids[:k])


def _has_unnamed_loop(text: str) -> bool:
    return any(t.data == "loop" and t.children[0] is None
               for t in _parser().parse(text).iter_subtrees())


def identifiers(text: str) -> dict[str, set[str]]:
    """Category -> names the spec declares that a rename can change on its own: names
    that also appear as a field (`layers[i].h` reads a value of the body; `a.q` an op's
    output) are left out, as are block params (their call sites name them as keywords)."""
    names = _names(text)
    fields = {v for _, role, v in names if role == "field"}
    out: dict[str, set[str]] = {}
    for _, role, v in names:
        if role not in ("use", "key", "field", "block param") and v not in fields:
            out.setdefault(role, set()).add(v)
    return out


def rename(text: str, old: str, new: str) -> str:
    """The spec with identifier `old` (declarations and uses) renamed to `new`."""
    spots = sorted((tok.start_pos, tok.end_pos) for tok, role, v in _names(text)
                   if v == old and role not in ("key", "field"))
    for start, end in reversed(spots):
        text = text[:start] + new + text[end:]
    return text


# ------------------------------------------------------------------------- running


@lru_cache(maxsize=64)
def _baseline(spec_text: str, kw: tuple):
    return _logits(spec_text, **dict(kw))


def _logits(spec_text: str, weights=None, **kw):
    torch.manual_seed(0)
    m = archc.build(spec_text)
    m.eval()
    if weights is not None:  # same weights by position: names may differ, order does not
        state = m.state_dict()
        m.load_state_dict(dict(zip(state, weights)))
    torch.manual_seed(1)
    tokens = torch.randint(0, 16, (2, 5))
    with torch.no_grad():
        out = m(tokens, **kw)
    return out, list(m.state_dict().values())


def assert_same(text: str, renamed: str, **kw) -> None:
    """Both specs build; with the same weights their logits are bit-identical."""
    want, weights = _baseline(text, tuple(sorted(kw.pop("base_kw", {}).items())))
    got, _ = _logits(renamed, weights, **kw)
    assert torch.equal(want, got)


BASE = """model m(vocab: int = 16, d: int = 16, r: int = 2 in 1..=4 runtime)
block core(x) {
  loop r max 4 { x = x + attention(rmsnorm(x), heads=2) }
  return x
}
let e = embed(vocab=vocab, dim=d)
x = e(tokens)
for i in 0..2 as layers { x = x + attention(rmsnorm(x), heads=2) }
loop r max 4 { x = x + linear(rmsnorm(x), out=d) }
x = core(x)
return lm_head(rmsnorm(x), tied=e)
"""


# ------------------------------------------------------------- the cases of issue 8


def test_a_run_time_param_named_start_is_not_the_cache_start():
    """`start = rt.cache_start(cache)` overwrote it: the loop ran 0 times."""
    renamed = rename(BASE, "r", "start")
    assert_same(BASE, renamed, base_kw={"r": 3}, start=3)
    source = archc.compile_source(renamed)
    assert "def forward(self, tokens, *, start: int = 2, cache=None):" in source


def test_a_run_time_param_named_i_survives_an_earlier_stack():
    assert_same(BASE, rename(BASE, "r", "i"), base_kw={"r": 3}, i=3)


@pytest.mark.parametrize("name", ["rope", "slot", "F", "range", "torch"])
def test_run_time_params_named_like_forward_locals(name):
    """They gave duplicate arguments; the keyword stays the spec's name."""
    assert_same(BASE, rename(BASE, "r", name), base_kw={"r": 3}, **{name: 3})


def test_a_run_time_param_packed_rejects_unknown_keywords():
    m = archc.build(rename(BASE, "r", "F"))
    with pytest.raises(TypeError, match="unexpected keyword argument 'rr'"):
        m(torch.zeros(1, 2, dtype=torch.long), rr=2)


@pytest.mark.parametrize("name", ["cache", "seed", "self"])
def test_a_run_time_param_named_like_a_call_keyword_is_one_clear_error(name):
    """`m(tokens, cache=c)` passes the KV cache, and nn.Module's `__call__(self, ...)`
    takes `self`: a run-time param of either name could never be passed."""
    with pytest.raises(ArchcError) as err:
        archc.load(rename(BASE, "r", name))
    assert err.value.code == "A010" and err.value.span is not None
    assert "keyword of the model's forward" in err.value.message


def test_a_compile_time_param_named_cache_works():
    text = BASE.replace("model m(vocab", "model m(cache: int = 16, vocab").replace(
        "embed(vocab=vocab", "embed(vocab=cache")
    assert_same(BASE, text)


NOISY = """model m(vocab: int = 16, d: int = 8, seed: int = 3, r: int = 2 in 1..=4 runtime)
let e = embed(vocab=vocab, dim=d)
x = e(tokens)
s = init_state(x, init="trunc_normal")
let c = linear(out=d)
loop r max 4 { s = s + c(rmsnorm(s + x)) }
return lm_head(s, tied=e)
"""


def test_a_compile_time_param_named_seed_is_not_the_noise_seed():
    """init_state's noise reads the local `seed` (forward's `seed=`): a static param of
    that name is a number of the spec, not a run-time param of forward."""
    m = archc.build(NOISY).eval()
    t = torch.randint(0, 16, (1, 5))
    assert torch.equal(m(t), m(t, seed=0))
    assert not torch.equal(m(t, seed=1), m(t, seed=2))


def test_a_model_named_F_does_not_hide_torch_functional():
    assert_same(BASE, rename(BASE, "m", "F"))


@pytest.mark.parametrize("name", ["range", "rt", "F", "self", "slot", "cache"])
def test_loop_variables_named_like_generated_code(name):
    assert_same(BASE, rename(BASE, "i", name))


def test_an_instance_named_new_cache_is_one_clear_error():
    text = BASE.replace("let e = embed", "let new_cache = embed").replace(
        "e(tokens)", "new_cache(tokens)").replace("tied=e", "tied=new_cache")
    with pytest.raises(ArchcError) as err:
        archc.load(text)
    assert err.value.code == "A010" and err.value.span is not None
    assert "`new_cache` is reserved" in err.value.message


def test_an_instance_named_new_cache_in_a_block_is_rejected_too():
    text = BASE.replace("x = x + attention(rmsnorm(x), heads=2) }\n  return",
                        "let new_cache = rmsnorm()\n x = new_cache(x) }\n  return")
    with pytest.raises(ArchcError, match="reserved"):
        archc.load(text)


@pytest.mark.parametrize("name", ["self", "nn", "super", "rt", "F", "slot"])
def test_a_block_param_named_like_generated_code(name):
    """A block's run-time param is a constructor argument kept as `self.<name>`."""
    text = _spec_text(Path("specs/sgt.arch"))
    renamed = re.sub(r"\bonset\b", name, text)  # the param, its uses and the call keyword
    assert_same(text, renamed)
    source = archc.compile_source(renamed)
    assert f"self.{name} = " in source


@pytest.mark.parametrize("name", ["slot", "cache", "self", "rt"])
def test_the_input_of_a_scanned_block_named_like_generated_code(name):
    """A block whose attention reads its own output runs as a scan with its own forward
    signature (archc/scan.py)."""
    text = _spec_text(Path("specs/recurrent_transformer.arch"))
    assert_same(text, rename(text, "x", name))


@pytest.mark.parametrize("name", ["layer", "layers_layer"])
def test_a_value_named_like_the_item_of_a_stack_loop(name):
    """`for i, layer in enumerate(self.layers)` must not take the name of the state the
    loop carries (found by ARCHC_RENAME_EVERY=4)."""
    text = rename(_spec_text(Path("specs/transformer.arch")), "layer", "layer_block")
    assert_same(text, rename(text, "x", name))


def test_renaming_works_on_the_parse_tree():
    text = rename(BASE, "d", "vocab_d")
    assert "embed(vocab=vocab, dim=vocab_d)" in text  # the keyword `vocab=` is kept
    text = rename(BASE, "x", "start")
    assert "block core(start)" in text and "start = core(start)" in text
    assert re.search(r"\bx\b", text) is None


# ------------------------------------------------- every identifier of every spec


SPECS = sorted(Path("specs").glob("*.arch"))


@lru_cache(maxsize=None)
def _spec_text(path: Path) -> str:
    return path.read_text()


@lru_cache(maxsize=None)
def _runtime_params(path: Path) -> frozenset[str]:
    return frozenset(p.name for p in archc.load(path).params.values() if p.runtime)


def _pairs():
    """(spec, category, old, new): every generated name in PER_NAME categories and every
    category with about PER_NAME * len(GENERATED) / categories names, spread round-robin
    over the specs and identifiers (the full product takes minutes)."""
    by_category: dict[str, list[tuple[Path, str]]] = {}
    for path in SPECS:
        ids = identifiers(_spec_text(path))
        runtime = _runtime_params(path)
        if runtime & ids.get("param", set()):
            ids["runtime param"] = runtime & ids["param"]
            ids["param"] -= runtime
        for category, names in sorted(ids.items()):
            for old in sorted(names - LANGUAGE):
                by_category.setdefault(category, []).append((path, old))
    every = int(os.environ.get("ARCHC_RENAME_EVERY", "0"))
    if every:  # every n-th pair of the full product (about 9,500 pairs), for a long run
        full = [(path, category, old, new) for category, choices in sorted(by_category.items())
                for path, old in choices for new in GENERATED]
        return full[::every]
    categories = sorted(by_category)
    out = []
    for k, new in enumerate(GENERATED):
        for j in range(PER_NAME):  # stride 3: each name meets a different mix
            category = categories[(k + 3 * j) % len(categories)]
            choices = by_category[category]
            path, old = choices[(k * 7 + j) % len(choices)]
            out.append((path, category, old, new))
    return out


@pytest.mark.parametrize("path, category, old, new",
                         [pytest.param(*p, id=f"{p[0].stem}-{p[1]}-{p[2]}-{p[3]}")
                          for p in _pairs()])
def test_renaming_to_a_generated_name_keeps_the_logits(path, category, old, new):
    text = _spec_text(path)
    if new == "i" and _has_unnamed_loop(text):
        pytest.skip("an unnamed loop binds `i` in the spec itself (issue 8 item 3)")
    if new in {v for _, _, v in _names(text)}:  # the spec uses `new`: free it first
        text = rename(text, new, f"{new}_was_here")
    renamed = rename(text, old, new)
    roles = {role for _, role, v in _names(text) if v == old}  # `old` may name several
    roles |= {"runtime param"} if category == "runtime param" else set()
    if any(new in REJECTED.get(role, ()) for role in roles):
        with pytest.raises(ArchcError, match="reserved|keyword"):
            archc.load(renamed)
        return
    kw = {new: 2} if category == "runtime param" else {}
    base_kw = {old: 2} if category == "runtime param" else {}
    assert_same(text, renamed, base_kw=base_kw, **kw)


def test_reparam_finds_the_instances_of_a_mangled_class():
    """A block `f` becomes class `F_1` (F is torch.nn.functional); the fold still finds
    its instances."""
    text = rename(rename(_spec_text(Path("specs/reparam_vit.arch")), "layer", "f"),
                  "reparam_vit", "F")
    assert "class F_1(nn.Module):" in archc.compile_source(text)
    torch.manual_seed(0)
    m = archc.build(text).eval()
    folded = archc.reparam(m)
    tokens = torch.randint(0, 16, (2, 5))
    with torch.no_grad():
        torch.testing.assert_close(folded(tokens), m(tokens), rtol=1e-4, atol=1e-4)
