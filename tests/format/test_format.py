"""archc fmt: the canonical printer round-trips every AST (a hypothesis property), is
idempotent on every spec, keeps comments, and its layout is fixed by golden text."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import archc
from archc import syntax as S
from archc.cli import main
from archc.fmt import format_text, print_model

SPECS = sorted(Path("specs").glob("*.arch"))
IDS = [p.stem for p in SPECS]

# ----------------------------------------------------------------------------- strategies
# ASTs as the parser can produce them: names that are not keywords, non-negative numbers
# (a minus sign is a `Neg`), strings without quotes or newlines, two-item `and`/`or`, no
# empty tuples, and no `return ... with ...` that also has named outputs (the grammar
# reads the comma after `with` as another adapter).

NAMES = st.sampled_from(["x", "y", "h", "s", "e", "attn", "layer", "n", "d", "k_1", "_t",
                         "rmsnorm", "Blocks", "w2"])
FLOATS = st.floats(min_value=0, max_value=1e300, allow_nan=False, allow_infinity=False).map(abs)
LEAVES = st.one_of(
    st.builds(S.Num, st.integers(min_value=0, max_value=10**12)),
    st.builds(S.Num, FLOATS),
    st.builds(S.Str, st.text(st.characters(blacklist_characters='"\n\r',
                                           blacklist_categories=("Cs",)), max_size=8)),
    st.builds(S.Bool, st.booleans()),
    st.builds(S.Name, NAMES),
)


def _extend(inner):
    kwargs = st.lists(st.builds(S.Kwarg, NAMES, inner), max_size=2).map(tuple)
    return st.one_of(
        st.builds(S.BinOp, st.sampled_from(["+", "-", "*", "/", "//", "%", "**"]), inner, inner),
        st.builds(S.Neg, inner),
        st.builds(S.Not, inner),
        st.builds(S.Logic, st.sampled_from(["and", "or"]),
                  st.tuples(inner, inner)),
        st.builds(S.Compare, st.sampled_from(["==", "!=", "<", "<=", ">", ">="]), inner, inner),
        st.builds(S.Range, inner, inner, st.booleans()),
        st.builds(S.Call, inner, st.lists(inner, max_size=2).map(tuple), kwargs),
        st.builds(S.Attr, inner, NAMES),
        st.builds(S.Index, inner, inner),
        st.builds(S.TupleLit, st.lists(inner, min_size=1, max_size=3).map(tuple)),
        st.builds(S.ListLit, st.lists(inner, max_size=3).map(tuple)),
    )


EXPRS = st.recursive(LEAVES, _extend, max_leaves=3)  # inside statements: keep specs small
BIG_EXPRS = st.recursive(LEAVES, _extend, max_leaves=12)
CALLS = st.builds(S.Call, st.builds(S.Name, NAMES), st.lists(EXPRS, max_size=1).map(tuple),
                  st.lists(st.builds(S.Kwarg, NAMES, EXPRS), max_size=2).map(tuple))
WITHS = st.lists(CALLS, max_size=2).map(tuple)
LABELS = st.none() | NAMES


def _simple():
    returns = st.one_of(
        st.builds(S.Return, EXPRS, WITHS, st.just(())),
        st.builds(S.Return, EXPRS, st.just(()),
                  st.lists(st.builds(S.Kwarg, NAMES, EXPRS), min_size=1, max_size=2).map(tuple)),
    )
    return st.one_of(
        st.builds(S.Assign, NAMES, EXPRS, WITHS),
        st.builds(S.Unpack, st.lists(NAMES, min_size=2, max_size=3).map(tuple), EXPRS),
        st.builds(S.Let, NAMES, st.none() | EXPRS, EXPRS),
        returns,
    )


def _compound(body):
    bodies = st.lists(body, max_size=3).map(tuple)
    return st.one_of(
        st.builds(S.For, st.lists(NAMES, min_size=1, max_size=2).map(tuple), EXPRS, LABELS,
                  bodies),
        st.builds(S.Loop, st.none() | NAMES, EXPRS, st.none() | EXPRS, st.none() | EXPRS,
                  LABELS, bodies),
        st.builds(S.If, EXPRS, bodies, bodies),
    )


STMTS = st.recursive(_simple(), _compound, max_leaves=4)
TYPES = st.sampled_from(["int", "float", "bool", "choice"])
DOMAINS = st.one_of(st.none(), EXPRS, st.lists(EXPRS, min_size=1, max_size=3).map(tuple))
PARAMS = st.builds(S.Param, NAMES, TYPES, st.none() | EXPRS, DOMAINS, st.booleans())
BLOCK_PARAMS = st.builds(S.Param, NAMES, TYPES, st.none() | EXPRS, st.none(), st.booleans())
BLOCKS = st.builds(S.Block, NAMES, st.lists(st.builds(S.TensorInput, NAMES), max_size=2)
                   .map(tuple), st.lists(BLOCK_PARAMS, max_size=2).map(tuple),
                   st.lists(STMTS, max_size=2).map(tuple))
MODELS = st.builds(S.Model, NAMES, st.lists(PARAMS, max_size=2).map(tuple),
                   st.lists(BLOCKS, max_size=1).map(tuple),
                   st.lists(STMTS, max_size=3).map(tuple))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(MODELS)
def test_parse_of_print_is_the_identity(model):
    text = print_model(model)
    assert S.parse(text) == model, text
    assert format_text(text) == text  # the printed form is canonical


@settings(max_examples=100, deadline=None)
@given(BIG_EXPRS)
def test_expressions_round_trip(e):
    text = print_model(S.Model("m", (), (), (S.Assign("x", e, ()),)))
    assert S.parse(text).body[0].value == e, text


# ----------------------------------------------------------------------------- specs


@pytest.mark.parametrize("path", SPECS, ids=IDS)
def test_fmt_is_idempotent_and_keeps_the_ast(path):
    text = path.read_text()
    once = archc.format(text)
    assert archc.format(once) == once
    assert S.parse(once) == S.parse(text)


@pytest.mark.parametrize("path", SPECS, ids=IDS)
def test_fmt_keeps_every_comment(path):
    text = path.read_text()
    out = archc.format(text)
    comments = [line[line.index("#"):].rstrip() for line in text.splitlines() if "#" in line]
    assert comments
    for c in comments:
        assert c in out


@pytest.mark.parametrize("path", SPECS, ids=IDS)
def test_fmt_ignores_layout(path):
    """Squash the spec onto as few lines as the grammar allows: same canonical text, less
    the comments (which the squash drops)."""
    model = S.parse(path.read_text())
    bare = print_model(model)
    squashed = " ".join(line.strip() for line in bare.splitlines())
    assert archc.format(squashed) == bare


@settings(max_examples=20, deadline=None)
@given(st.data())
def test_comments_anywhere_survive_and_stay_put(data):
    path = data.draw(st.sampled_from(SPECS))
    lines = path.read_text().splitlines()
    rng = random.Random(data.draw(st.integers(0, 2**32)))
    added = []
    for k in range(rng.randint(1, 5)):
        i = rng.randrange(len(lines))
        note = f"# note {k}"
        if rng.random() < 0.5 and "#" not in lines[i]:
            lines[i] = lines[i] + "  " + note
        else:
            lines.insert(i, note)
        added.append(note)
    text = "\n".join(lines) + "\n"
    out = format_text(text)
    assert S.parse(out) == S.parse(text)
    assert format_text(out) == out
    for note in added:
        assert note in out


# ----------------------------------------------------------------------------- layout

MESSY = """
# header comment
model   tiny( d :int=64 in {32,64},r:int = 4 in 1..=8 runtime )   # the model
block layer(x) {
  x = x + attention( rmsnorm(x), heads = 4 )   # attention
  # the mlp
  x = x+mlp(rmsnorm(x),hidden=2*d,act="relu")


  return x
}
let emb = embed(vocab=256, dim=d)
s = emb(tokens)
loop i in r max 8 as steps { s = layer(s) with lora(rank = 2) ; }
if d > 32 { s = scale(s, by=-(1/d)**2) } else { s = s }
return lm_head(rmsnorm(s), tied=emb)
""".replace(" ; ", " ")

CANONICAL = """# header comment
model tiny(
  d: int = 64 in {32, 64},
  r: int = 4 in 1..=8 runtime,
)  # the model

block layer(x) {
  x = x + attention(rmsnorm(x), heads=4)  # attention
  # the mlp
  x = x + mlp(rmsnorm(x), hidden=2 * d, act="relu")

  return x
}

let emb = embed(vocab=256, dim=d)
s = emb(tokens)
loop i in r max 8 as steps {
  s = layer(s) with lora(rank=2)
}
if d > 32 {
  s = scale(s, by=-(1 / d) ** 2)
} else {
  s = s
}
return lm_head(rmsnorm(s), tied=emb)
"""


def test_canonical_layout():
    assert archc.format(MESSY) == CANONICAL
    assert archc.format(CANONICAL) == CANONICAL


def test_format_reports_syntax_errors():
    with pytest.raises(archc.ArchcError):
        archc.format("model m(\nx = ")


def test_cli_fmt(tmp_path, capsys):
    spec = tmp_path / "tiny.arch"
    spec.write_text(MESSY)
    assert main(["fmt", str(spec)]) == 0
    assert capsys.readouterr().out == CANONICAL
    assert main(["fmt", "--check", str(spec)]) == 1
    assert main(["fmt", "-w", str(spec)]) == 0
    assert spec.read_text() == CANONICAL
    assert main(["fmt", "--check", str(spec)]) == 0
    bad = tmp_path / "bad.arch"
    bad.write_text("model m(\n")
    assert main(["fmt", str(bad)]) == 1
    assert "bad.arch:" in capsys.readouterr().err
