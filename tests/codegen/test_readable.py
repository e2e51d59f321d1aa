"""Generated modules read like careful hand-written ones (issue 9, item 7).

Every spec in specs/, in train and infer mode: no line over 100 characters, no loop over
`range(int(...))` standing for a condition, no unused import, no local assigned and never
read, no argument never read (checked with the stdlib `ast` module), the same bytes from
a second generation, and line wrapping that keeps the module's syntax tree. Then the
specific forms: run-length cache layouts, named slot offsets, `if` for a loop that runs
at most once."""

from __future__ import annotations

import ast
import random
from pathlib import Path

import pytest

import archc
from archc import api
from archc.codegen.torch import emit, generate
from archc.codegen.torch.tidy import repeated_list
from archc.codegen.torch.wrap import _bracketed_lines, wrap_line, wrap_source

SPECS = sorted(Path("specs").glob("*.arch"))
CASES = [(path, mode) for path in SPECS for mode in ("train", "infer")]


def _program(path: Path, mode: str, **params):
    return api.compile_program(archc.load(path, **params), mode)


@pytest.fixture(scope="module")
def sources():
    """(spec, mode) -> (generated source, the same source before line wrapping)."""
    out = {}
    for path, mode in CASES:
        program = _program(path, mode)
        real = emit.wrap_source
        emit.wrap_source = lambda text: text
        try:
            plain = generate(program)
        finally:
            emit.wrap_source = real
        out[path.stem, mode] = (generate(program), plain)
    return out


# ----------------------------------------------------------------------------- ast checks


def _loads(node) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)
            and isinstance(n.ctx, ast.Load)}


def _stores(node) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)
            and isinstance(n.ctx, ast.Store)}


def unused_imports(tree: ast.Module) -> list[str]:
    bound = {}
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                bound[(alias.asname or alias.name).split(".")[0]] = node.lineno
    used = _loads(tree)
    return [f"line {line}: `{name}` is imported and never used"
            for name, line in bound.items() if name not in used]


def dead_locals(tree: ast.Module) -> list[str]:
    """Locals assigned and never read in their function, and stores overwritten before
    any read in the same straight-line block (`_` is the unused name by convention)."""
    out = []
    for fn in ast.walk(tree):
        if not isinstance(fn, ast.FunctionDef):
            continue
        read = set().union(*(_loads(stmt) for stmt in fn.body))
        out += [f"{fn.name}: `{name}` is assigned and never read"
                for name in sorted(_stores(fn) - read - {"_"})]
        args = fn.args.args + fn.args.kwonlyargs
        out += [f"{fn.name}: argument `{a.arg}` is never read" for a in args
                if a.arg not in read | {"self"}]
        out += _overwritten(fn.name, fn.body)
    return out


def _overwritten(where: str, body: list[ast.stmt]) -> list[str]:
    out, pending = [], {}
    for stmt in body:
        for name in _loads(stmt):
            pending.pop(name, None)
        if isinstance(stmt, ast.Delete):
            for target in stmt.targets:
                if isinstance(target, ast.Name):
                    pending.pop(target.id, None)
        if isinstance(stmt, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
            for name in _stores(stmt) - {"_"}:
                if name in pending:
                    out.append(f"{where}: line {pending[name]}: `{name}` is overwritten "
                               "before it is read")
                pending[name] = stmt.lineno
        else:  # a compound statement may not run: its stores kill nothing
            for field in ("body", "orelse"):
                out += _overwritten(where, getattr(stmt, field, None) or [])
    return out


def test_the_checker_sees_what_it_looks_for():
    tree = ast.parse("import torch\nimport os\n\ndef f(x, w):\n    y = x\n    y = 2\n"
                     "    z = 3\n    return torch.zeros(y)\n")
    assert unused_imports(tree) == ["line 2: `os` is imported and never used"]
    assert dead_locals(tree) == ["f: `z` is assigned and never read",
                                 "f: argument `w` is never read",
                                 "f: line 5: `y` is overwritten before it is read"]


# ----------------------------------------------------------------------------- every spec


@pytest.mark.parametrize("path,mode", CASES, ids=[f"{p.stem}-{m}" for p, m in CASES])
def test_generated_module_reads_like_hand_written(sources, path, mode):
    source, plain = sources[path.stem, mode]
    long = [line for line in source.splitlines() if len(line) > 100]
    assert not long, f"{len(long)} lines over 100 characters: {long[0]!r}"
    assert "range(int(" not in source
    tree = ast.parse(source)
    assert unused_imports(tree) == []
    assert dead_locals(tree) == []
    assert ast.dump(tree) == ast.dump(ast.parse(plain)), "wrapping changed the code"
    assert wrap_source(plain) == source
    code = {row for row, line in enumerate(plain.split("\n"))
            if line.strip() and not line.lstrip().startswith("#")}
    assert _bracketed_lines(plain) & code == continuation_lines(ast.parse(plain)) & code


def continuation_lines(tree: ast.Module) -> set[int]:
    """0-based indexes of the lines of a statement after its first (bracketed lines),
    and for a def or class the comment lines before its first statement."""
    out: set[int] = set()
    for stmt in ast.walk(tree):
        if not isinstance(stmt, ast.stmt):
            continue
        blocks = [b for b in (getattr(stmt, "body", None), getattr(stmt, "orelse", None))
                  if isinstance(b, list) and b]
        end = blocks[0][0].lineno - 1 if blocks else stmt.end_lineno
        out.update(range(stmt.lineno, end))
    return out


@pytest.mark.parametrize("name", ["huginn", "sgt", "slab"])
def test_generation_is_deterministic(sources, name):
    assert generate(_program(Path(f"specs/{name}.arch"), "train")) == \
        sources[name, "train"][0]


# ----------------------------------------------------------------------------- the forms


def test_huginn_layout_and_slots_are_named(sources):
    source, _ = sources["huginn", "train"]
    assert "layout = [(4, 16)] * 260" in source
    for constant in ("CORE_BLOCK_SLOT = 2", "CORE_BLOCK_STRIDE = 4", "CODA_SLOT = 258"):
        assert f"    {constant}  # " in source
    assert "self.CORE_BLOCK_SLOT + it * self.CORE_BLOCK_STRIDE" in source
    assert "x = block(x, rope, cache, self.CODA_SLOT + i)" in source
    assert "2 + it * 4" not in source and "258 + i" not in source


def test_a_loop_that_runs_at_most_once_is_an_if(sources):
    source, _ = sources["sgt", "train"]
    assert "        if step >= self.onset:\n" in source
    assert "cache, slot + 1)" in source  # the index of the one iteration is 0
    twice = generate(_program(Path("specs/sgt.arch"), "train", loops=2))
    assert "for it in range(2 if step >= self.onset else 0):" in twice
    assert "slot + self.LOOPED_SLOT + it)" in twice


def test_an_unread_loop_index_is_underscore():
    text = """model m(d: int = 8, r: int = 3 runtime)
let core = rmsnorm()
let emb = embed(vocab=16, dim=d)
x = emb(tokens)
loop r max 4 { x = core(x) }
return lm_head(x, tied=emb)
"""
    source = generate(api.compile_program(archc.load(text)))
    assert "for _ in range(r):" in source


def test_slot_constants_keep_clear_of_the_class_attributes():
    """An instance called like a slot constant keeps its name (its state-dict key); the
    constant is mangled, and the model still decodes as it prefills."""
    text = Path("specs/sgt.arch").read_text().replace(
        "return lm_head(rmsnorm(x), tied=emb)",
        "let LAYERS_STRIDE = rmsnorm()\nreturn lm_head(LAYERS_STRIDE(x), tied=emb)")
    source = archc.compile_source(text)
    assert "self.LAYERS_STRIDE = nn.RMSNorm(" in source
    assert "LAYERS_STRIDE_1 = 2  # " in source and "i * self.LAYERS_STRIDE_1)" in source
    import torch

    torch.manual_seed(0)
    model = archc.build(text).eval()
    tokens = torch.randint(0, 256, (1, 6))
    cache = model.new_cache(batch=1, max_len=8)
    steps = torch.cat([model(tokens[:, t:t + 1], cache=cache) for t in range(6)], dim=1)
    torch.testing.assert_close(steps, model(tokens), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("items", [
    [], [(4, 16)], [(4, 16)] * 2, [(4, 16)] * 260, [(4, 16), (1, 16)] * 4,
    [(2, 32), (3, 32)] * 3 + [(2, 32)], [(1, 8)] * 5 + [(2, 8), (3, 8)] + [(4, 8)] * 3,
    [(1, 2), (3, 4), (5, 6)],
])
def test_repeated_list_is_the_same_list(items):
    code = repeated_list(items)
    assert eval(code) == items  # our own literal of ints, in a test
    assert len(code) < 80


# ----------------------------------------------------------------------------- wrapping


def _same_tree(line: str, inside: bool = False, limit: int = 40) -> list[str]:
    wrapped = wrap_line(line, limit, inside)
    if inside:
        before, after = f"f(\n{line}\n)", "f(\n" + "\n".join(wrapped) + "\n)"
    else:
        before, after = line, "\n".join(wrapped)
    assert ast.dump(ast.parse(after.strip())) == ast.dump(ast.parse(before.strip()))
    return wrapped


def test_wrap_keeps_the_tree_of_awkward_lines():
    for line in [
        "x = f(a, -b, c * -d, e if g else h, not k, [i for i, j in items], 'q, r')",
        "y = a - -b + (c ** -2) - (d not in e) * (f is not g) - lambda_ * 2 + q[1, 2]",
        'z = ("a long string, with a \\\\ backslash and a \\x00 escape " * 3, b"x")',
        "w = {'key': value_one, 'other': value_two, 'third': [1, 2, 3, 4, 5, 6, 7]}",
        "v = g(*args, **kwargs)[0].attribute(another_argument, yet_another_one)",
    ]:
        lines = _same_tree(line)
        assert len(lines) > 1
    message = '"a message long enough that it has to be split into pieces at spaces",'
    assert len(_same_tree(message, inside=True)) > 1


def test_wrap_keeps_the_tree_of_random_expressions():
    rng = random.Random(0)

    def expr(depth: int) -> str:
        if depth == 0 or rng.random() < 0.2:
            return rng.choice(["x", "y_1", "2", "0.5", "self.step", "'s t'", "(-3)"])
        kind = rng.randrange(4)
        if kind == 0:
            op = rng.choice(["+", "-", "*", "/", "//", "**", "<", ">=", "and", "or"])
            return f"({expr(depth - 1)} {op} {expr(depth - 1)})"
        if kind == 1:
            return f"({expr(depth - 1)} if {expr(depth - 1)} else {expr(depth - 1)})"
        if kind == 2:
            args = ", ".join(expr(depth - 1) for _ in range(rng.randrange(1, 4)))
            return f"min({args})" if rng.random() < 0.5 else f"[{args}]"
        return f"-{expr(depth - 1)}"

    for _ in range(200):
        line = f"        out = {expr(5)}"
        wrapped = wrap_line(line, 60)
        assert ast.dump(ast.parse("\n".join(wrapped).strip())) == \
            ast.dump(ast.parse(line.strip()))


def test_wrap_leaves_a_docstring_and_short_lines_alone():
    doc = '        """' + "a docstring " * 10 + '"""'
    assert wrap_line(doc, 60) == [doc]
    assert wrap_source("x = 1\n") == "x = 1\n"


def test_a_long_comment_continues_on_the_next_line():
    line = "        # spec.arch:3: " + "word " * 30
    wrapped = wrap_line(line.rstrip(), 60)
    assert all(len(w) <= 60 and w.startswith("        #") for w in wrapped)
    assert " ".join(w.strip().lstrip("#").strip() for w in wrapped).split() == \
        line.strip().lstrip("#").split()
