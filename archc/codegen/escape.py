"""How text from a spec is written into generated source, so that it can only be data.

Spec text is data: a choice string, an override from `--set` or a keyword, a file name or a
comment line copied from the spec must never end the comment or string it is printed in
and run as code. Every backend writes such text through the three functions here, never
with a bare f-string:

- `py_str(s)`: a Python string literal. `repr`-style, so quotes, backslashes, line breaks
  (CR, LF, U+2028, U+2029, U+0085), NUL, other control characters, bidi controls and lone
  surrogates all come out as escapes (`\\r`, `\\x00`, `\\u2028`, `\\udc80`); the result is
  ASCII-safe to encode and evaluates to exactly `s`.
- `comment(s)`: text for a `#` comment or a docstring. Every character that is not
  printable (`str.isprintable`: line and paragraph separators, C0 and C1 controls, form
  feed and vertical tab, NUL, format characters such as the bidi controls U+202A-U+202E,
  U+2066-U+2069, U+200E, U+200F and U+061C, lone surrogates) is written as its escape,
  so the comment stays on one line, reads the same in every editor (no Trojan Source
  reordering) and encodes as UTF-8.
- `file_name(path)`: the last component of a spec's path, through `comment`.

Where each generated-source position gets its text (torch backend, archc/codegen/torch):

| position                                             | written by          |
|------------------------------------------------------|---------------------|
| header `# Generated ... from FILE`, `# model m(...)` | `comment`, values `py_str`/`literal` |
| module and class docstrings (names, file names)      | `docstring`         |
| `# FILE:LINE: <spec line>` and `# FILE:LINE` comments | `comment`, `file_name` |
| leaf module args (`rt.MoE(..., act='gelu')`)         | `literal`           |
| block instance args (`Block(onset=3)`)               | `literal`           |
| op attributes (`select_kv` inference branch, halting `per`) | `py_str`     |
| messages (`rt.check_count(r, 8, 'r')`, `rt.refuse_cache`, `rt.check_types`) | `py_str`, `literal` |
| `module.__file__` of a build (archc/api.py)          | `file_name`         |

Names (values, instances, labels, loop variables, params, blocks, the model) are
identifiers by the grammar (archc/grammar/arch.lark, checked again by archc/names.py) and
are never quoted or escaped; they reach the code through the namespace in
archc/codegen/namespace.py, which keeps them apart from the names the generated code uses:

| name in the spec              | in the generated code                                  |
|-------------------------------|--------------------------------------------------------|
| value, block input, carried state | a local, mangled (`start` -> `start_1`); the liveness allocator reuses it |
| loop variable                 | a local, mangled on collision (`for range_1 in range(4):`) |
| run-time param                | the root forward's keyword, the spec's name; where the code needs that name (`F`, `range`...) it arrives through `**params` into a mangled local; `cache`, `self` are an A010 error |
| block, model                  | a class name, mangled (`F` -> `F_1`); archc.build and reparam look it up |
| block run-time param          | `self.<name>`; the constructor argument is mangled     |
| instance, label               | an attribute `self.<name>` = its state-dict key, kept; names of nn.Module's or the model's own attributes (`train`, `new_cache`) are an A010 error |
| label or instance moved through KV-cache slots by a loop | a class constant `CODA_SLOT`, `CORE_BLOCK_STRIDE` (upper-cased), mangled around the class's other attributes (codegen/torch/tidy.py) |
"""

from __future__ import annotations

import math
from pathlib import PurePath

# Format characters that reorder text (Trojan Source); all are non-printable already, but
# are named here so the invariant is checked, not assumed.
BIDI = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c")


def py_str(s: str) -> str:
    """A Python string literal that evaluates to `s`, whatever `s` holds; in double
    quotes where `s` has no quote (the style of the rest of the generated file)."""
    code = str.__repr__(str(s))
    if code.startswith("'") and '"' not in code and "'" not in code[1:-1]:
        code = f'"{code[1:-1]}"'
    return code


def literal(value) -> str:
    """A Python literal for a plain value of a spec (str, bool, int, float, tuple or list
    of them, None). Non-finite floats become `float('inf')`-style calls, not names."""
    if isinstance(value, str):
        return py_str(value)
    if value is None or isinstance(value, bool):
        return repr(value)
    if isinstance(value, int):
        return int.__repr__(value)
    if isinstance(value, float):
        if math.isfinite(value):
            return float.__repr__(value)
        return f"float({py_str(float.__repr__(value))})"
    if isinstance(value, (tuple, list)):
        items = [literal(v) for v in value]
        if isinstance(value, list):
            return f"[{', '.join(items)}]"
        return f"({', '.join(items)}{',' if len(items) == 1 else ''})"
    raise TypeError(f"no literal for {type(value).__name__}")


def _escape_char(ch: str) -> str:
    if ch.isprintable() and ch not in BIDI:
        return ch
    return str.__repr__(ch)[1:-1]  # '\r', '\x00', '\u2028', '\udc80'


def comment(s: str) -> str:
    """`s` as one line of comment text: every non-printable character escaped."""
    return "".join(_escape_char(ch) for ch in str(s))


def docstring(s: str) -> str:
    """A triple-quoted docstring holding `s` as comment text; `\"\"\"` inside is escaped."""
    text = comment(s).replace("\\", "\\\\").replace('"', '\\"')
    return f'"""{text}"""'


def file_name(path: str) -> str:
    """The last component of a spec's path, safe in a comment or docstring."""
    return comment(PurePath(str(path)).name)
