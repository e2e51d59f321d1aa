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
    ("depth_attention", ()): "91b8f2e6f886e2e231bb718375f7c3d4db34195faa2b0e000a1727c3ce5d30c9",
    ("depth_recurrent", ()): "b375300158aadd86379a01cc6640eacadcf343ffd899c2828769c5ea15bc573b",
    ("huginn", ()): "aa1ad66dc0ae81e64cf4d0b70d704997d8fcdbe7b1e3de11f9e667c6f2c5a4f3",
    ("huginn", (("r", 8),)): "b85f771bf6ddffea4027c26bbd3d298a202a756504d3ca0c320f0be3cd517f68",
    ("hyper", ()): "3f93dae3b6ab802da145fd8f62276cb93d5c9e1c1a519fcadb28620afde4efa9",
    ("raptor", ()): "bc230e5579ae6545f01052e01be68e4bc07cf5d96daa75c5a01ac0acabfc3ae0",
    ("recurrent_transformer", ()):
        "8dc0b1d348d40257c4e78262b871d193b10724aaa3fff262b616c2ac5d048c60",
    ("relaxed_recursive", ()): "9acf5d7cb7c8756eeb4e375b9ef80f9196acd579ef429e0372b2876687a37def",
    ("satformer", ()): "5d3ee08cb0171a72c26e627d427285856f69049ab9703e7e4e974eab25a6eaeb",
    ("sret", ()): "203c9df44c033ee23e3672d115aea224eaa834fc4ec5d8362973cbc0e5cea37b",
    ("stochastic_kv", ()): "5712e0b4ca915e834538dc05668d19a59096870be1ddbffbc7d44f427433d5f0",
    ("transformer", ()): "6332120f68e1fe0038c7a1199dd4884b437e5293198148add71ce90f19c1bfc3",
    ("transformer", (("d", 512), ("depth", 48), ("heads", 8), ("hidden", 1376),
                     ("kv_heads", 4))):
        "7fadb1757a5a75ba8f0001cc806560952d98cb4a78dcbd918bd4c4461457900d",
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


def test_cli_hash(capsys):
    assert main(["hash", "specs/huginn.arch", "--set", "r=8"]) == 0
    assert capsys.readouterr().out.strip() == FIXTURES[("huginn", (("r", 8),))]
