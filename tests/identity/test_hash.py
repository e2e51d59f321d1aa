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
# of an unchanged spec moved: fine when the normal form changed on purpose (a new op
# attribute, a new format VERSION), then update the values (the failure prints them); a bug
# when not. Rewriting an op's expansion must not move them (tests/identity/test_identity.py).
FIXTURES = {
    ("depth_attention", ()): "e7680add08a089106f85eacaf30c6f50d4a6301951f3fc9e2f35ca941c570571",
    ("depth_recurrent", ()): "cc35f9916a424b14f9e6291a64985d13e43eb5a390b5c2d215186810e20517f9",
    ("huginn", ()): "3623943cdda77509564f76fb08fd1132c5e59fb7d3da025d9c5ae97aa831aa6e",
    ("huginn", (("r", 8),)): "2ef20375f955d9d94f9447233f3c0de7677a1f82597b3549da3077bd11e093b5",
    ("hyper", ()): "6a6744a6fcb37b0dcd8f03fc1451f4b5558ae86a3a4ff4b5cb77dd22ed098dcd",
    ("raptor", ()): "dd8b1031a724bbee09763e7b86adc020cddf20c9f627863ffe58bb58be8e1e76",
    ("recurrent_transformer", ()):
        "dc5f5202fbedd0d04ed835813f2f110e6990b79897f7cbcca2f85c389041e53e",
    ("relaxed_recursive", ()): "a6266664f122acbf0a15fd7ae947bcf82165b53ccc7b30450eaa5ed89d60e8ab",
    ("satformer", ()): "254a53dd1830daff41a98a7f82153c96c07ea23ae57327d6c4a11f130652b337",
    ("sgt", ()): "06b721d2e8913d1c8a0b483e1d67ebdbfca476c6826464dbd8ebaa9ac93ea89b",
    ("sret", ()): "7df59598e4658dd8239650a00071b99f61bda70ca7f2100330d326da7a8d8ec0",
    ("stochastic_kv", ()): "304a30277b63b87bbc0401c5593dc09b6afc766424e2243a9c975be959a6438d",
    ("transformer", ()): "38b35a5df7206c89b0ef5a066d43ac4762f772c3fbd8aaa60ab0ec92eb7922a9",
    ("transformer", (("d", 512), ("depth", 48), ("heads", 8), ("hidden", 1376),
                     ("kv_heads", 4))):
        "3a47c5dfc1bb3cce7264f23927fd9545ff73e2caabf20275d3ba972d88c02fc6",
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
