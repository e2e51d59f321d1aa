"""The backend seam: the registry, coverage against the op table, `--backend`, and what
happens when a backend lacks a prim (decomposed or refused, never silently different)."""

from dataclasses import replace

import pytest
import torch

import archc
from archc.cli import main
from archc.codegen import backend as backends
from archc.ops.prims import PRIMS

SPEC = "specs/transformer.arch"


@pytest.mark.parametrize("name", backends.names())
def test_a_complete_backend_lowers_every_prim(name):
    b = backends.get(name)
    stale = sorted(set(b.lowerings) - set(PRIMS)) + sorted(set(b.leaves) - set(PRIMS))
    assert not stale, f"{name} lowers prims the op table does not have: {stale}"
    if b.complete:
        assert b.missing() == [], f"{name} claims completeness but lacks {b.missing()}"
        weighted = {p for p, prim in PRIMS.items() if prim.weights}
        assert weighted <= set(b.leaves), f"{name} cannot build {weighted - set(b.leaves)}"


def test_missing_is_what_the_tables_lack():
    torch_backend = backends.get("torch")
    lowerings = {k: v for k, v in torch_backend.lowerings.items() if k != "gelu"}
    leaves = {k: v for k, v in torch_backend.leaves.items() if k != "rmsnorm"}
    partial = replace(torch_backend, name="partial", lowerings=lowerings, leaves=leaves,
                      complete=False)
    assert partial.missing() == ["gelu", "rmsnorm"]


def test_unknown_backend_is_an_archc_error():
    with pytest.raises(archc.ArchcError) as e:
        archc.compile_source(SPEC, backend="troch")
    assert e.value.code == "A002"
    assert "did you mean `torch`" in e.value.hint


def test_backend_torch_is_the_default():
    assert archc.compile_source(SPEC, backend="torch") == archc.compile_source(SPEC)
    torch.manual_seed(0)
    a = archc.build(SPEC, backend="torch")
    torch.manual_seed(0)
    b = archc.build(SPEC)
    tokens = torch.randint(0, 64, (1, 8))
    assert torch.equal(a(tokens), b(tokens))


def test_a_prim_a_backend_cannot_lower_is_refused():
    torch_backend = backends.get("torch")
    lowerings = {k: v for k, v in torch_backend.lowerings.items() if k != "silu"}
    partial = replace(torch_backend, name="partial", lowerings=lowerings, complete=False)
    program = archc.api.compile_program(archc.load(SPEC))
    assert "silu" in partial.unsupported(program)
    with pytest.raises(archc.ArchcError) as e:
        backends.prepare(program, partial)
    assert e.value.code == "A070" and "silu" in e.value.message


def test_cli_backends_lists_torch_at_full_coverage(capsys):
    assert main(["backends"]) == 0
    out = capsys.readouterr().out
    assert f"coverage: {len(PRIMS)}/{len(PRIMS)} prims (complete)" in out
    assert out.startswith("torch: ")


def test_cli_compile_backend(tmp_path, capsys):
    assert main(["compile", SPEC, "--backend", "torch", "-o", str(tmp_path)]) == 0
    assert (tmp_path / "transformer.py").read_text() == archc.compile_source(SPEC)
    with pytest.raises(SystemExit) as e:
        main(["compile", SPEC, "--backend", "nope", "-o", str(tmp_path)])
    assert e.value.code == 2


def test_a_backend_without_composites_runs_them_decomposed():
    """A backend that lowers no composite prim still builds specs that use them: prepare
    decomposes each into simple prims, with the same weights and the same logits."""
    torch_backend = backends.get("torch")
    simple = {k: v for k, v in torch_backend.lowerings.items() if not PRIMS[k].composite}
    partial = replace(torch_backend, name="simple", lowerings=simple, complete=False)
    spec = archc.load("specs/hyper.arch", d=32, heads=4)
    program = archc.api.compile_program(spec, "infer")
    assert "hyper" in partial.unsupported(program)
    decomposed = backends.prepare(program, partial, "infer")
    assert not partial.unsupported(decomposed)
    torch.manual_seed(0)
    normal = archc.build(spec, mode="infer")
    other = partial.build(decomposed, spec).eval()
    other.load_state_dict(normal.state_dict(), strict=True)
    tokens = torch.randint(0, 64, (2, 6))
    with torch.no_grad():
        assert torch.allclose(normal(tokens), other(tokens), atol=1e-6)
