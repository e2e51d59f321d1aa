"""archc.hash: fixed values per spec (fixtures), the same in every process, unchanged by
formatting, comments and renaming of local names, changed by any architecture change."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

import archc
from archc import syntax as S
from archc.cli import main
from archc.fmt import print_model
from archc.ops import OPS

SPECS = sorted(Path("specs").glob("*.arch"))
IDS = [p.stem for p in SPECS]

# The hash of each spec at its defaults (and a few bindings). A change here means the hash
# of an unchanged spec moved: fine when the IR itself changed on purpose (a new attribute,
# a different expansion), then update the values (the failure prints them); a bug when not.
FIXTURES = {
    ("depth_attention", ()): "b8ff6133a9c9716b226f15ad48b36e7d91e20a907737e8527becb78a50f2fdd6",
    ("depth_recurrent", ()): "a978a85d4494d986f3d8e5b3c458cce200d23e0b54ced7b35cc04804e7577be6",
    ("huginn", ()): "685c05898137bc34e9e24ae2b508656bd96ad41263f445c0a2fe69a32f90bb89",
    ("huginn", (("r", 8),)): "c52177b68184d8fdbc3f43729b8ed5f49108e8abf35fde73faa2cd80d7242f2f",
    ("hyper", ()): "2b1047f8a43ea1d908ccd158209e224d7ef8034c9aafd49c3d5fe270c3baa4a4",
    ("raptor", ()): "dd5e98e6fce40e4058bbfa0ff3115e0bc61ddf4907a1c8c37312cec79752cf60",
    ("recurrent_transformer", ()):
        "9472eb6f9ea6ad5171bb75372a6170b8964e7dd266eadec7c79218d72bf1a650",
    ("relaxed_recursive", ()): "553dc73db1dae0b2908ce97c20621ebfd4f73635c304c68ac147c12b877c0343",
    ("satformer", ()): "a3185942d2b0289c0fdc64a47ca7828e3e068be7e126c01a296e261a61b3b068",
    ("sgt", ()): "f8ba210cf4c5010d8925aa0c04fd5713a929bb9eb129f44ae559ca94a421dda3",
    ("sret", ()): "5cdbefdc346c1a2f15c60b0bd975a541b2e905f1597839ec419948c64596422b",
    ("stochastic_kv", ()): "67c3aa57d5e57223abc77ed760fbaf85bb717415f2c091a9140aaac7be5ad758",
    ("transformer", ()): "b38bce92de98b3912757a95b5c1b6c29c84a1d54058e201a33cafa6f1edf81ca",
    ("transformer", (("d", 512), ("depth", 48), ("heads", 8), ("hidden", 1376),
                     ("kv_heads", 4))):
        "7d58021805f80f1dc93c0f4f34056ce965b9060a87b780280f116240f56fea90",
}


def _hash(key) -> str:
    name, params = key
    return archc.hash(f"specs/{name}.arch", **dict(params))


def test_hash_fixtures():
    got = {key: _hash(key) for key in FIXTURES}
    changed = {k: v for k, v in got.items() if v != FIXTURES[k]}
    assert not changed, "hashes moved; if the IR changed on purpose, set:\n" + "\n".join(
        f"    {k!r}: {v!r}," for k, v in changed.items())


def test_hash_is_the_same_in_every_process():
    keys = [("huginn", (("r", 8),)), ("relaxed_recursive", ()), ("sret", ())]
    code = ("import archc, json; print(json.dumps([archc.hash(f'specs/{n}.arch', **dict(p)) "
            f"for n, p in {keys!r}]))")
    outs = set()
    for seed in ("0", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              env=env)
        assert proc.returncode == 0, proc.stderr
        outs.add(proc.stdout)
    assert len(outs) == 1
    assert outs.pop().strip() == str([FIXTURES[k] for k in keys]).replace("'", '"')


# ----------------------------------------------------------------------------- stability


@pytest.mark.parametrize("path", SPECS, ids=IDS)
def test_formatting_and_comments_do_not_change_the_hash(path):
    text = path.read_text()
    bare = print_model(S.parse(text))  # no comments
    squashed = " ".join(line.strip() for line in bare.splitlines())  # one line
    assert archc.hash(text) == archc.hash(bare) == archc.hash(squashed)
    assert archc.hash(path) == archc.hash(archc.format(text))


def _locals(model: S.Model) -> set[str]:
    """Names the spec itself introduces: values, instances, loop variables, labels, blocks,
    tensor inputs and the model's name."""
    out = {model.name}

    def stmts(body):
        for st in body:
            if isinstance(st, S.Assign):
                out.add(st.target)
            elif isinstance(st, S.Unpack):
                out.update(st.targets)
            elif isinstance(st, S.Let):
                out.add(st.name)
            elif isinstance(st, S.For):
                out.update(st.vars)
                out.update([st.label] if st.label else [])
                stmts(st.body)
            elif isinstance(st, S.Loop):
                out.update(n for n in (st.var, st.label) if n)
                stmts(st.body)
            elif isinstance(st, S.If):
                stmts(st.then)
                stmts(st.orelse)

    for block in model.blocks:
        out.add(block.name)
        out.update(i.name for i in block.inputs)
        stmts(block.body)
    stmts(model.body)
    return out


def _fixed(node, acc: set[str]) -> None:
    """Names that the renaming must leave alone: params (model and block), keyword and
    field names, and names of ops."""
    if isinstance(node, S.Param):
        acc.add(node.name)
    if isinstance(node, (S.Kwarg, S.Attr)):
        acc.add(node.name)
    if dataclasses.is_dataclass(node):
        for f in dataclasses.fields(node):
            _fixed(getattr(node, f.name), acc)
    elif isinstance(node, tuple):
        for item in node:
            _fixed(item, acc)


def _rename(node, names: dict[str, str]):
    if isinstance(node, tuple):
        return tuple(_rename(n, names) for n in node)
    if isinstance(node, str):
        return names.get(node, node)
    if not dataclasses.is_dataclass(node):
        return node
    keep = {S.Kwarg: {"name"}, S.Attr: {"name"}, S.Param: {"name", "type"},
            S.Str: {"value"}, S.Logic: {"op"}, S.BinOp: {"op"}, S.Compare: {"op"}}
    fixed = keep.get(type(node), set())
    changes = {f.name: _rename(getattr(node, f.name), names)
               for f in dataclasses.fields(node) if f.name not in fixed and f.compare}
    return dataclasses.replace(node, **changes)


@pytest.mark.parametrize("path", SPECS, ids=IDS)
def test_renaming_local_names_does_not_change_the_hash(path):
    model = S.parse(path.read_text())
    fixed: set[str] = {"tokens"} | set(OPS)
    _fixed(model, fixed)
    names = {n: f"zz_{n}" for n in sorted(_locals(model) - fixed)}
    assert len(names) >= 4, names
    renamed = print_model(_rename(model, names))
    assert renamed != print_model(model)
    assert archc.hash(renamed) == archc.hash(path)


TRANSFORMER = Path("specs/transformer.arch").read_text()
HUGINN = Path("specs/huginn.arch").read_text()


def test_same_architecture_from_different_text_hashes_the_same():
    base = archc.hash(TRANSFORMER)
    same = [
        TRANSFORMER.replace("hidden=hidden", "hidden=2 * (hidden // 2)"),
        TRANSFORMER.replace("hidden: int = 172", "ffn: int = 172").replace(
            "hidden=hidden", "hidden=ffn"),  # a static param's name
        TRANSFORMER.replace(  # declaration order of instances (first use decides)
            "  let attn = attention(heads=heads, kv_heads=kv_heads)\n"
            "  let mlp = swiglu(hidden=hidden)\n",
            "  let mlp = swiglu(hidden=hidden)\n"
            "  let attn = attention(heads=heads, kv_heads=kv_heads)\n"),
        TRANSFORMER + "\nblock unused(x) {\n  return rmsnorm(x)\n}\n",
    ]
    for text in same:
        assert text != TRANSFORMER
        assert archc.hash(text) == base, text
    # A run-time param's name: numbered by first use.
    renamed = HUGINN.replace("  r: int = 4", "  steps: int = 4").replace(
        "loop r max", "loop steps max")
    assert renamed != HUGINN and archc.hash(renamed) == archc.hash(HUGINN)


def test_every_architecture_change_changes_the_hash():
    t = TRANSFORMER
    variants = {
        "base": archc.hash(t),
        "d": archc.hash(t, d=32),
        "depth": archc.hash(t, depth=3),
        "hidden": archc.hash(t, hidden=96),
        "kv_heads": archc.hash(t, kv_heads=4),
        "vocab": archc.hash(t, vocab=512),
        "eps": archc.hash(t.replace("x + attn(rmsnorm(x))", "x + attn(rmsnorm(x, eps=1e-5))")),
        "norm": archc.hash(t.replace("x + attn(rmsnorm(x))", "x + attn(layernorm(x))")),
        "rope": archc.hash(t.replace("kv_heads=kv_heads)", "kv_heads=kv_heads, rope=false)")),
        "ffn": archc.hash(t.replace("swiglu(hidden=hidden)", "mlp(hidden=hidden)")),
        "untied": archc.hash(t.replace("tied=emb", "vocab=vocab")),
        "shared": archc.hash(t.replace("x = emb(tokens)\n", "x = emb(tokens)\nlet core = layer()\n")
                             .replace("  x = layer(x)\n", "  x = core(x)\n")),
        "loop": archc.hash(t.replace("for i in 0..depth as layers {",
                                     "loop depth as layers {")),
        "extra_op": archc.hash(t.replace("x = x + mlp(rmsnorm(x))",
                                         "x = x + mlp(rmsnorm(x))\n  x = rmsnorm(x)")),
    }
    assert len(set(variants.values())) == len(variants), variants
    h = HUGINN
    more = [
        archc.hash(h), archc.hash(h, r=8),  # a run-time count's value
        archc.hash(h.replace("max 64 {", "max 32 {").replace("1..=64", "1..=32")),  # its max
        archc.hash(h.replace("qk_bias=true", "qk_bias=false")),  # an op option
        archc.hash(h.replace('init="trunc_normal"', 'init="zeros"')),  # an init
        archc.hash(h.replace("let core_block = recur()\n", "").replace(  # per-step weights
            "s = core_block(s, e)", "s = recur(s, e)")),
        archc.hash("specs/depth_recurrent.arch"),
        archc.hash("specs/depth_recurrent.arch", ls_init=0.2),  # LayerScale's init value
        archc.hash("specs/depth_recurrent.arch", gate_bias=2.0),  # a gate's identity bias
    ]
    assert len(set(more)) == len(more)


RUNTIME = """model rt(d: int = 16, step: int = 0 runtime, r: int = 4 in 1..=8 runtime)

block layer(x, onset: int runtime) {
  x = x + scale(mlp(x, hidden=8), by=after(onset))
  return x
}

x = embed(tokens, vocab=32, dim=d)
for i in 0..2 as layers {
  x = layer(x, onset=10 * (i + 1))
}
loop j in r max 8 {
  x = scale(linear(x, out=d), by=1 / (j + 1))
}
return lm_head(x, vocab=32)
"""


def test_run_time_scalars_rename_freely_and_change_with_their_values():
    """Loop indices in scales, run-time params in counts and schedules, a block's run-time
    params and the values its instances keep."""
    t = RUNTIME
    base = archc.hash(t)
    renamed = (t.replace("loop j in r", "loop k in r").replace("(j + 1)", "(k + 1)")
               .replace("onset", "start").replace("r: int", "n: int")
               .replace("in r max", "in n max"))
    assert archc.hash(renamed) == base
    changed = [
        t.replace("(j + 1)", "(j + 2)"),
        t.replace("10 * (i + 1)", "20 * (i + 1)"),
        t.replace("in r max 8", "in 2 * r - 4 max 8"),  # same count at the defaults
        t.replace("after(onset)", "ramp(onset, onset + 5)"),
    ]
    hashes = {base} | {archc.hash(c) for c in changed}
    assert len(hashes) == len(changed) + 1


def test_cli_hash(capsys):
    assert main(["hash", "specs/huginn.arch", "--set", "r=8"]) == 0
    assert capsys.readouterr().out.strip() == FIXTURES[("huginn", (("r", 8),))]
