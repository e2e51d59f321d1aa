"""Spec text is data: no string, override, file name or comment of a spec runs as code.

Each case puts one hostile payload in one position that reaches the generated module and
asserts that (1) the payload's code never runs (it would write a marker file), (2) the
generated source compiles, and (3) building either works or raises an ArchcError.
Names are identifiers by the grammar; their collisions are tests/trust/test_namespace.py.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

import archc
from archc.cli import main
from archc.codegen.escape import comment, docstring, file_name, literal, py_str
from archc.errors import ArchcError

MARKER = Path(__file__).with_name("_escape_marker_never_written")
# code that writes the marker; no slash and no double quote, so it fits a file name and a
# spec string as well
CODE = f"__import__('pathlib').Path(bytes.fromhex('{str(MARKER).encode().hex()}').decode())" \
       ".write_text('1')"

# name -> payload: each tries a different way out of a comment, docstring or string
PAYLOADS = {
    "cr": f"a\r{CODE}\r#",
    "lf": f"a\n{CODE}\n#",
    "crlf": f"a\r\n{CODE}\r\n#",
    "u2028": f"a\u2028{CODE}\u2028#",
    "u2029": f"a\u2029{CODE}\u2029#",
    "u0085": f"a\u0085{CODE}\u0085#",
    "nul": f"a\x00{CODE}\x00#",
    "formfeed": f"a\x0c\x0b{CODE}",
    "triple_double": f'a"""+{CODE}+"""',
    "triple_single": f"a'''+{CODE}+'''",
    "quotes": f"a'\"+{CODE}+'\"",
    "hash": f"a#{CODE}",
    "backslash": f"a\\\n{CODE}\n#\\",
    "surrogate": f"a\udcff{CODE}\ud800",
    "bidi": f"a\u202e\u2066{CODE}\u2069\u202c\u200e\u200f\u061c#",
}
# what a spec's string literal can hold (the grammar: no double quote, no newline)
IN_SPEC = {k: v for k, v in PAYLOADS.items() if '"' not in v and "\n" not in v}
# what a file name can hold (no slash, no NUL; a surrogate only as an undecodable byte)
IN_FILE_NAME = {k: v.replace("\x00", "").replace("\ud800", "") for k, v in PAYLOADS.items()
                if "/" not in v}

SPEC = """model m(vocab: int = 8, d: int = 8, style: choice = {default}{domain})
# {comment}
let e = embed(vocab=vocab, dim=d)
x = e(tokens)  # {comment}
if style == "b" {{ x = x + x }}
return lm_head(x, tied=e)  {comment_2}
"""


def _spec(default='"a"', domain="", comment_text="plain", comment_2="") -> str:
    return SPEC.format(default=default, domain=domain, comment=comment_text,
                       comment_2=comment_2)


def _cases():
    """(position, payload name, spec, overrides)."""
    for name, p in IN_SPEC.items():
        yield "choice default", name, _spec(default=f'"{p}"'), {}
        yield "domain set", name, _spec(domain=f' in {{"a", "{p}"}}'), {"style": p}
        yield "comment", name, _spec(comment_text=p, comment_2=f"#{p}"), {}
    for name, p in PAYLOADS.items():
        yield "override", name, _spec(), {"style": p}


def _check(build) -> None:
    """Run a build; only an ArchcError may stop it, and the marker must stay unwritten."""
    MARKER.unlink(missing_ok=True)
    try:
        build()
    except ArchcError:
        pass
    finally:
        assert not MARKER.exists(), "spec text ran as code"


def _compile_and_build(spec, **overrides) -> None:
    try:
        source = archc.compile_source(spec, **overrides)
    except ArchcError:
        return
    compile(source, "<generated>", "exec")  # (2) the generated file always compiles
    assert len(source.encode()) > 0  # encodes as UTF-8: no lone surrogate left in it
    archc.build(spec, **overrides)


@pytest.mark.parametrize("position, payload, spec, overrides",
                         [pytest.param(*c, id=f"{c[0]}-{c[1]}") for c in _cases()])
def test_spec_text_never_runs(position, payload, spec, overrides):
    _check(lambda: _compile_and_build(spec, **overrides))


@pytest.mark.parametrize("payload", sorted(IN_FILE_NAME))
def test_a_file_name_never_runs(payload, tmp_path):
    path = tmp_path / f"m{IN_FILE_NAME[payload]}.arch"
    try:
        path.write_text(_spec())
    except (OSError, UnicodeEncodeError):
        pytest.skip("the file system refuses this name")
    _check(lambda: _compile_and_build(path))


@pytest.mark.parametrize("payload", ["cr", "lf", "triple_double", "surrogate"])
def test_a_cli_override_never_runs(payload, tmp_path):
    spec = tmp_path / "m.arch"
    spec.write_text(_spec())
    out = tmp_path / "out"

    def compile_cli():
        assert main(["compile", str(spec), "--set", f"style={PAYLOADS[payload]}",
                     "-o", str(out)]) == 0
        source = (out / "m.py").read_text()
        exec(compile(source, "<generated>", "exec"), {})  # as `import m` would run it

    _check(compile_cli)


@pytest.mark.parametrize("payload", sorted(PAYLOADS))
def test_py_str_is_a_literal_of_exactly_its_text(payload):
    s = PAYLOADS[payload]
    code = py_str(s)
    assert eval(compile(code, "<literal>", "eval")) == s
    assert len(code.splitlines()) == 1 and code.isascii()


@pytest.mark.parametrize("payload", sorted(PAYLOADS))
def test_comment_text_stays_on_one_printable_line(payload):
    for text in (comment(PAYLOADS[payload]), file_name(f"dir/{PAYLOADS[payload]}")):
        assert len(text.splitlines()) == 1 and text.isprintable()
        text.encode()
        compile(f"# {text}\nx = 1\n", "<comment>", "exec")
    doc = docstring(PAYLOADS[payload])
    ns: dict = {}
    exec(compile(f"def f():\n    {doc}\n", "<doc>", "exec"), ns)
    assert ns["f"].__doc__ == comment(PAYLOADS[payload])


def test_literal_writes_non_finite_floats_as_values():
    assert eval(literal(math.inf)) == math.inf
    assert eval(literal(-math.inf)) == -math.inf
    assert math.isnan(eval(literal(math.nan)))
    assert eval(literal(("a\n", [1, 2.5, True, None]))) == ("a\n", [1, 2.5, True, None])


# issue 8 item 4: generated source that did not compile


def test_a_nul_byte_in_a_comment_gives_a_module_that_compiles():
    spec = _spec(comment_text="a\x00b", comment_2="#\x00")
    source = archc.compile_source(spec)
    assert "\x00" not in source and "# <spec>:4: x = e(tokens)  # a\\x00b" in source
    archc.build(spec)


@pytest.mark.parametrize("where", ["comment", "choice", "override"])
def test_a_lone_surrogate_gives_a_module_that_encodes(where):
    spec = _spec(comment_text="a\udcffb") if where == "comment" else \
        _spec(default='"a\ud800"') if where == "choice" else _spec()
    overrides = {"style": "\udcff"} if where == "override" else {}
    source = archc.compile_source(spec, **overrides)
    source.encode("utf-8")
    archc.build(spec, **overrides)
