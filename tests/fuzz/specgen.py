"""A generator of valid random specs, drawn from the op registry (issue 8 item 7).

Every spec it writes is a tiny language model (vocab 16-32, width 8-16) that `archc.load`
must accept and `archc.build` must build; a spec it writes that archc refuses is either a
generator bug or a compiler bug, and either way a finding. The constructs it covers are
the ones the metamorphic relations in tests/fuzz/relations.py exercise: `for` stacks and
`loop`s (static counts, run-time counts with a max, loop indices in scales), shared and
per-iteration instances, blocks with params, residual adds, attention owning or sharing
its K/V, norms, mlp/swiglu, gates, scale/layerscale/scalar, drop_path, LoRA adapters,
`training(...)` forms and depth references (`L[j].h`, `sum(L[0..n].h)`, `kv=L[i - 1].a`);
and, rarer, the paper constructs (`exotic`): moe, sigma-Reparam (`sigma=true`,
sigma_linear), ds_linear, topk, linear_attention, leaky_relu, batchnorm/repbn and
partition_norm among the norms, rotate, horn, delta, width_route/group_fuse,
hyper-connections (streams/hyper_read/hyper_write/stream_merge), head_loop, a per-head
gate on an earlier attention's values (`v_add=`), init_state loop states, gate and
gated_mix options, `init=`/`out_init=`/`std=` on every op that takes them, embed scale.

The generator is written against a small `Draw` interface, so one piece of code serves
two drivers: `RandomDraw` (a seeded `random.Random`, for bench/fuzz.py's long campaign)
and hypothesis (`tests/fuzz/strategies.py`, which shrinks a failing case to a small one).
Each generated case carries `features`: names of the constructs it used, so a test can
tell which open issue a failure belongs to (see `KNOWN` in tests/fuzz/relations.py).

Options of each op are read from the registry (`archc.ops.OPS[...].attrs`): boolean and
`Literal` fields are drawn from their schema, so a new flag on attention is fuzzed without
touching this file; numbers that must agree with the width (heads, hidden sizes) are
chosen here, since the schema does not know the width.
"""

from __future__ import annotations

import random
import re
import typing
from dataclasses import dataclass, field

from archc.init import USES_STD
from archc.ops import OPS, PRIMS

# every activation of the op table (a new one is fuzzed without touching this file)
ACTIVATIONS = tuple(name for name, prim in PRIMS.items() if prim.activation)

VOCABS = (16, 24, 32)
WIDTHS = (8, 12, 16)
SEQ = (3, 6)                 # lengths a relation runs at, inclusive
MAX_STATEMENTS = 9            # statements in the whole spec, all bodies counted
MAX_NEST = 2                  # for/loop nesting depth

# Flags a generated attention may set, and ones it leaves at their default: `sigma` is
# power iteration (its FLOPs are per forward, not per token; see tests/analysis/test_cost.py)
# and `kv_p` needs a `kv=` source (drawn separately).
ATTENTION_SKIP = {"sigma", "kv_infer", "past", "kv_p"}


class Draw(typing.Protocol):
    def integer(self, lo: int, hi: int) -> int: ...      # inclusive
    def choice(self, options: typing.Sequence): ...
    def boolean(self, p: float = 0.5) -> bool: ...


class RandomDraw:
    """Draws from a seeded random.Random: reproducible from the seed alone."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)

    def integer(self, lo: int, hi: int) -> int:
        return self.rng.randint(lo, hi)

    def choice(self, options):
        return options[self.rng.randrange(len(options))]

    def boolean(self, p: float = 0.5) -> bool:
        return self.rng.random() < p


@dataclass
class Case:
    """One generated spec and what a relation needs to run it."""

    text: str
    vocab: int
    width: int
    features: set[str] = field(default_factory=set)
    runtime: dict[str, int] = field(default_factory=dict)   # run-time params and a value


def bool_flags(op: str, skip=()) -> dict[str, bool]:
    """The boolean options of a registered op, with their defaults."""
    fields = OPS[op].attrs.model_fields
    return {name: f.default for name, f in fields.items()
            if f.annotation is bool and name not in skip}


def literal_options(op: str, name: str) -> tuple:
    """The allowed values of a `Literal[...]` option of a registered op."""
    annotation = OPS[op].attrs.model_fields[name].annotation
    return typing.get_args(annotation)


def lit(value) -> str:
    """Spec text of a static value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value + '"'
    return repr(value)


class _Gen:
    """State of one spec being written: its width, the names made so far, the budget."""

    def __init__(self, draw: Draw, vocab: int, width: int, avoid=frozenset()):
        self.d = draw
        self.avoid = avoid
        self.width = width
        self.vocab = vocab
        self.features: set[str] = set()
        self.left = MAX_STATEMENTS
        self.serial = 0
        # (name, has a `hidden` param, has a linear of its own for LoRA to adapt)
        self.blocks: list[tuple[str, bool, bool]] = []
        self.looping_blocks: set[str] = set()  # blocks with a head loop, or calling one
        self.runtime: dict[str, int] = {}
        self.in_block = False
        self.unnamed_loops = 0    # enclosing `loop`s without an index name
        self.nest_now = 0

    def allowed(self, feature: str) -> bool:
        return feature not in self.avoid

    def fresh(self, stem: str) -> str:
        self.serial += 1
        return f"{stem}{self.serial}"

    # ---------------------------------------------------------------- expressions

    def heads(self) -> tuple[int, int, bool]:
        """A head count that divides the width, a kv head count dividing it, and rope
        (which needs an even head dim)."""
        heads = self.d.choice([h for h in (1, 2, 4) if self.width % h == 0])
        kv = self.d.choice([k for k in (1, 2, 4) if heads % k == 0])
        rope = (self.width // heads) % 2 == 0
        return heads, kv, rope

    def attention_args(self, heads: int, kv: int, rope_ok: bool) -> tuple[list[str], bool]:
        args = [f"heads={heads}"]
        if kv != heads:
            args.append(f"kv_heads={kv}")
        flags = bool_flags("attention", ATTENTION_SKIP)
        rope = rope_ok
        for name, default in flags.items():
            if name == "rope":
                if rope_ok and self.d.boolean(0.2):
                    rope = False
                    args.append("rope=false")
                elif not rope_ok:
                    rope = False
                    args.append("rope=false")
                continue
            if name == "alibi":
                if not rope and self.d.boolean(0.4):
                    args.append("alibi=true")
                continue
            if name == "causal" and not self.allowed("non_causal"):
                continue
            if self.d.boolean(0.15):
                args.append(f"{name}={lit(not default)}")
                if name == "causal":
                    self.features.add("non_causal")
        extra = self.init_opts("attention") + self.sigma()
        if extra:
            args.append(extra.removeprefix(", "))
        return args, rope

    def norm(self, x: str, final: bool = False) -> str:
        kind = self.d.choice(("rmsnorm", "rmsnorm", "layernorm", "none", "other"))
        if kind == "other":
            kind = self.d.choice(("rmsnorm", "batchnorm", "repbn", "partition_norm"))
            if final and kind in ("batchnorm", "repbn"):
                # eval BatchNorm with fresh running statistics is near the identity: before
                # lm_head it leaves a deep unnormed stack's logits to overflow float32
                kind = "rmsnorm"
            if kind in ("batchnorm", "repbn") and self.allowed("batchnorm"):
                self.features.add("batchnorm")
                return f"{kind}({x})"
            if kind == "partition_norm" and self.allowed("partition_norm"):
                self.features.add("partition_norm")
                parts, dc = self.d.choice(self.partitions())
                return f"partition_norm({x}, parts={parts}" + (f", dc={dc}" if dc else "") + ")"
            kind = "rmsnorm"
        if kind == "none":
            return x
        if kind == "layernorm" and self.d.boolean(0.3):
            return f"layernorm({x}, bias=false)"
        return f"{kind}({x})"

    def hidden(self) -> int:
        return self.d.choice((4, 8, 12, 16))

    def init_opts(self, op: str, p: float = 0.12) -> str:
        """Optional `init=` / `out_init=` / `std=` of an op, from its schema (", ..." or "")."""
        if not self.allowed("init") or not self.d.boolean(p):
            return ""
        self.features.add("init")
        fields = OPS[op].attrs.model_fields
        opts, used = [], []
        for name in ("init", "out_init"):
            if name in fields and self.d.boolean(0.6):
                value = self.d.choice(literal_options(op, name))
                opts.append(f"{name}={lit(value)}")
                used.append(value)
        defaults = [fields[n].default for n in ("init", "out_init") if n in fields
                    and not any(o.startswith(n + "=") for o in opts)]
        if any(v in USES_STD for v in used + defaults) and self.d.boolean(0.5):
            opts.append(f"std={self.d.choice((0.01, 0.05, 0.3))}")
        return "".join(", " + o for o in opts)

    def sigma(self) -> str:
        """Optional `sigma=true` (sigma-Reparam weights) on linear, mlp, swiglu, attention."""
        if self.allowed("sigma") and self.d.boolean(0.08):
            self.features.add("sigma")
            return ", sigma=true"
        return ""

    def partitions(self, rotate: bool = False) -> list[tuple[int, int]]:
        """(parts, dc) with the width = parts * c + dc (c even for a rotation)."""
        out = []
        for parts in (1, 2, 3, 4):
            for dc in (0, 2, 4):
                c, rest = divmod(self.width - dc, parts)
                if c > 0 and not rest and (not rotate or c % 2 == 0):
                    out.append((parts, dc))
        return out

    def sublayer(self, x: str) -> str:
        """A width-preserving weight-carrying op applied to x."""
        kind = self.d.choice(("attention", "attention", "mlp", "swiglu", "linear", "act",
                              "other"))
        if kind == "other":
            kind = self.d.choice(("sigma_linear", "ds_linear", "topk", "moe", "linear",
                                  "linear_attention"))
            if not self.allowed(kind):
                kind = "linear"
        if kind == "attention":
            heads, kv, rope = self.heads()
            args, _ = self.attention_args(heads, kv, rope)
            self.features.add("attention")
            return f"attention({x}, {', '.join(args)})"
        if kind == "mlp":
            args = [f"hidden={self.hidden()}"]
            act = self.d.choice(literal_options("mlp", "act"))
            if act != "gelu":
                args.append(f"act={lit(act)}")
            if self.d.boolean(0.3):
                args.append("bias=true")
            return f"mlp({x}, {', '.join(args)}{self.init_opts('mlp')}{self.sigma()})"
        if kind == "swiglu":
            return f"swiglu({x}, hidden={self.hidden()}{self.init_opts('swiglu')}{self.sigma()})"
        bias = ", bias=true" if self.d.boolean(0.3) else ""
        if kind == "sigma_linear":
            self.features.add("sigma")
            return f"sigma_linear({x}, out={self.width}{bias}{self.init_opts('sigma_linear')})"
        if kind == "ds_linear":
            self.features.add("ds_linear")
            rank = self.d.choice((2, 4, 8))
            nnz = self.d.integer(1, min(rank, 4))
            return f"ds_linear({x}, out={self.width}, rank={rank}, nnz={nnz}{bias})"
        if kind == "topk":
            # Lazy Neuron: the hidden activation keeps its k largest entries
            self.features.add("topk")
            hidden = self.hidden()
            k = self.d.integer(1, hidden)
            k = f"k={k}" if self.d.boolean() else str(k)
            return (f"linear(topk(relu(linear({x}, out={hidden}{bias})), {k}), "
                    f"out={self.width}{bias})")
        if kind == "linear_attention":
            self.features.add("linear_attention")
            heads = self.d.choice([h for h in (1, 2, 4) if self.width % h == 0])
            kernel = f", kernel={self.d.integer(1, 4)}" if self.d.boolean() else ""
            return (f"linear_attention({x}, heads={heads}{kernel}"
                    f"{self.init_opts('linear_attention')})")
        if kind == "moe":
            self.features.add("moe")
            experts = self.d.integer(1, 4)
            args = [f"experts={experts}", f"hidden={self.hidden()}"]
            k = self.d.integer(1, experts)
            if k != 2:
                args.append(f"k={k}")
            if self.d.boolean(0.3):
                args.append(f"capacity={self.d.choice((0.5, 1.0, 2.0))}")
            if self.d.boolean(0.2):
                args.append("noise=0.1")  # router noise, in training only
            act = self.d.choice(literal_options("moe", "act"))
            if act != "gelu":
                args.append(f"act={lit(act)}")
            return f"moe({x}, {', '.join(args)}{self.init_opts('moe')})"
        if kind == "linear":
            return f"linear({x}, out={self.width}{bias}{self.init_opts('linear')}{self.sigma()})"
        act = self.d.choice(ACTIVATIONS + ("leaky_relu",))
        inner = f"linear({x}, out={self.width}{bias})"
        if act == "leaky_relu":
            if not self.allowed("leaky_relu"):
                return f"silu({inner})"
            self.features.add("leaky_relu")
            slope = self.d.choice(("", ", 0.2", ", slope=0.1", ", slope=-0.5"))
            return f"leaky_relu({inner}{slope})"
        return f"{act}({inner})"

    def wrap(self, y: str, x: str, scale_ok: str | None = None) -> str:
        """An optional multiplier on a residual branch."""
        kind = self.d.choice(("none", "none", "none", "layerscale", "scalar", "scale",
                              "drop_path", "gate", "training", "index"))
        if kind == "layerscale":
            if self.d.boolean(0.2):
                return f"layerscale({y})"
            return f"layerscale({y}, init={self.d.choice((0.1, 0.5, 1e-4, -0.3))})"
        if kind == "scalar":
            return f"scalar({y}, init={self.d.choice((0.5, 1.0))})"
        if kind == "scale":
            return f"scale({y}, {self.d.choice(('0.5', '2', '1 / 3'))})"
        if kind == "drop_path":
            self.features.add("drop_path")
            return f"drop_path({y}, {self.d.choice((0.1, 0.5))})"
        if kind == "gate":
            self.features.add("gate")
            per = self.d.choice(("channel", "token"))
            units = f", units={self.width}" if per == "channel" else ""
            act = self.d.choice(literal_options("gate", "act"))
            acts = "" if act == "sigmoid" else f", act={lit(act)}"
            if self.d.boolean(0.3):
                acts += ", bias=true" + (f", bias_init={self.d.choice((1.0, -2.0))}"
                                         if self.d.boolean() else "")
            acts += self.init_opts("gate")
            return f"gate({x}, per={lit(per)}{units}{acts}) * {y}"
        if kind == "training":
            self.features.add("training")
            return f"scale({y}, training({self.d.choice(('0.5', '0', '2'))}, 1.0))"
        if kind == "index" and scale_ok:
            self.features.add("loop_index")
            return f"scale({y}, 1 / ({scale_ok} + 1))"
        return y

    # ---------------------------------------------------------------- statements

    def residual(self, index: str | None) -> list[str]:
        form = self.d.choice(("pre", "pre", "pre", "post", "mix", "plain"))
        top = self.nest_now == 0 and not self.in_block  # a loop of only it changes nothing
        if top and self.allowed("dead_value") and self.d.boolean(0.05):
            # a value nobody reads: on main cost counts its params and FLOPs while the
            # built module drops it (issue 8 item 3, wrongstatic)
            self.features.add("dead_value")
            return [f"{self.fresh('y')} = linear(x, out={self.width})"]
        if form == "mix":
            opts = ""
            if self.allowed("gated_mix_opts") and self.d.boolean(0.4):
                self.features.add("gated_mix_opts")
                if self.d.boolean():
                    opts += f", bias={self.d.choice((0.0, -1.0, 3.5))}"
                opts += self.init_opts("gated_mix", 1.0)
            return [f"x = gated_mix(x, {self.sublayer(self.norm('x'))}{opts})"]
        if form == "post":
            return [f"x = rmsnorm(x + {self.sublayer('x')})"]
        if form == "plain":
            y = self.norm("x") if self.d.boolean() else "silu(x)"
            if y == "x":
                # `x = x`: a statement that computes nothing (a loop body of only this one
                # generates a Python block with no statement on main: issue 8 item 4)
                self.features.add("identity_statement")
                if not self.allowed("identity_statement"):
                    y = "rmsnorm(x)"
            return [f"x = {y}"]
        return [f"x = x + {self.wrap(self.sublayer(self.norm('x')), 'x', index)}"]

    def shared_kv(self) -> list[str]:
        """An attention whose K/V a later attention reads (`kv=a`)."""
        heads, kv, rope = self.heads()
        a = self.fresh("a")
        self.features.add("shared_kv")
        self.features.add("attention")
        return [f"{a} = attention({self.norm('x')}, heads={heads}"
                + (f", kv_heads={kv}" if kv != heads else "")
                + ("" if rope else ", rope=false") + ")",
                f"x = x + {a}",
                f"x = x + attention({self.norm('x')}, heads={heads}"
                + (f", kv_heads={kv}" if kv != heads else "")
                + ("" if rope else ", rope=false") + f", kv={a})"]

    def block_call(self) -> list[str]:
        name, has_hidden, _ = self.d.choice(self.blocks)
        arg = f", hidden={self.hidden()}" if has_hidden and self.d.boolean() else ""
        self.features.add("block")
        return [f"x = {name}(x{arg})"]

    def body(self, nest: int, index: str | None) -> list[str]:
        n = self.d.integer(1, 2)
        out: list[str] = []
        for _ in range(n):
            out += self.statement(nest, index)
        return out

    def for_stack(self, nest: int) -> list[str]:
        i, label = self.fresh("i"), self.fresh("L")
        if self.unnamed_loops and self.allowed("shadowed_index") and self.d.boolean(0.3):
            # `loop n { for i ... }`: on main the inner `i` shadows the unnamed loop's own
            # index and most iterations never run (issue 8 item 3, wrongstatic)
            i = "i"
            self.features.add("shadowed_index")
        n = self.d.integer(1, 3)
        self.features.add("for")
        ref = self.d.choice(("none", "none", "value", "kv"))
        a, h = self.fresh("a"), self.fresh("h")  # fresh: a nested stack must not rebind
        lines: list[str] = []
        if ref == "kv":
            heads, kv, rope = self.heads()
            norope = "" if rope else ", rope=false"
            kvs = f", kv_heads={kv}" if kv != heads else ""
            self.features.update({"depth_ref", "shared_kv", "attention"})
            lines += [f"  if {i} == 0 {{",
                      f"    {a} = attention(rmsnorm(x), heads={heads}{kvs}{norope})",
                      "  } else {",
                      f"    {a} = attention(rmsnorm(x), heads={heads}{kvs}{norope}, "
                      f"kv={label}[{i} - 1].{a})",
                      "  }", f"  x = x + {a}"]
        inner = self.body(nest + 1, i)
        if ref == "value":
            lines += [f"  {h} = {self.sublayer(self.norm('x'))}", f"  x = x + {h}"]
        lines += ["  " + s for s in inner]
        out = [f"for {i} in 0..{n} as {label} {{", *lines, "}"]
        if ref == "value" and not self.in_block:
            self.features.add("depth_ref")
            j = self.d.integer(0, n - 1)
            out.append(self.d.choice((f"x = x + {label}[{j}].{h}",
                                      f"x = x + sum({label}[0..{n}].{h})")))
        return out

    def loop(self, nest: int) -> list[str]:
        """A recurrence: shared instances made before it, per-iteration ones inside."""
        out: list[str] = []
        count = str(self.d.integer(1, 3))
        head = "loop "
        if not self.in_block and self.d.boolean(0.35):
            self.runtime.setdefault("r", 2)
            count = "r max 3"
            self.features.add("runtime_loop")
        i = None
        if self.d.boolean(0.4) or self.unnamed_loops and not self.allowed("nested_unnamed_loop"):
            i = self.fresh("j")
            head += f"{i} in "
        head += count
        if not self.in_block and "runtime_loop" in self.features and count.startswith("r") \
                and self.allowed("halting") and self.d.boolean(0.2):
            per = lit(self.d.choice(("token", "sequence")))
            tol = self.d.choice(("0.01", "0.3", "1.0"))  # never, sometimes, soon
            head += f" until converged(x, tol={tol}, per={per})"
            self.features.add("halting")
        self.features.add("loop")
        if i is None and self.unnamed_loops:
            # two unnamed loops nested: on main the inner one's implicit index clashes
            # with the outer's (A011 "shadows"); issue 8 item 3, wrongstatic
            self.features.add("nested_unnamed_loop")
        shape = self.d.choice(("shared", "shared", "inline", "block", "lora"))
        adaptable = [b for b in self.blocks if b[2]]
        if shape == "block" and not self.blocks or shape == "lora" and not adaptable:
            shape = "shared"
        if shape == "shared":
            name = self.fresh("core")
            op = self.sublayer_instance()
            out.append(f"let {name} = {op}")
            call = f"{name}({self.norm('x')})"
            inner = [f"x = x + {self.wrap(call, 'x', i)}"]
            self.features.add("shared_instance")
        elif shape in ("block", "lora"):
            blk = self.d.choice(self.blocks if shape == "block" else adaptable)[0]
            name = self.fresh("core")
            out.append(f"let {name} = {blk}()")
            call = f"x = {name}(x)"
            if shape == "lora":
                call += f" with lora(rank={self.d.choice((1, 2))})"
                self.features.add("lora")
            inner = [call]
            self.features.add("shared_instance")
        else:
            self.features.add("per_iteration")
            self.unnamed_loops += i is None
            inner = self.body(nest + 1, i)
            self.unnamed_loops -= i is None
        out += [head + " {", *["  " + s for s in inner], "}"]
        return out

    def sublayer_instance(self) -> str:
        """A named instance of a weight-carrying op (`let core = ...`)."""
        kind = self.d.choice(("attention", "mlp", "swiglu", "linear"))
        if kind == "attention":
            heads, kv, rope = self.heads()
            args, _ = self.attention_args(heads, kv, rope)
            self.features.add("attention")
            return f"attention({', '.join(args)})"
        if kind == "mlp":
            return f"mlp(hidden={self.hidden()})"
        if kind == "swiglu":
            return f"swiglu(hidden={self.hidden()})"
        return f"linear(out={self.width})"

    # ---------------------------------------------------------------- rarer constructs

    def exotic(self, nest: int) -> list[str]:
        """One of the paper constructs: hyper-connections, delta, head_loop, width routing,
        a per-head gate on values, a rotation, a loop state from init_state."""
        kinds = ["delta", "width_route", "gate_head", "rotate", "init_state", "head_loop"]
        if not self.in_block:
            kinds.append("hyper")
        kinds = [k for k in kinds if self.allowed(k) and (k != "rotate" or
                                                         self.partitions(rotate=True))]
        if not kinds:
            return self.residual(None)
        kind = self.d.choice(kinds)
        self.features.add(kind)
        if kind == "delta":
            h = self.fresh("h")
            beta = f", beta_init={self.d.choice((0.0, 0.5, 2.0))}" if self.d.boolean(0.4) else ""
            return [f"{h} = {self.d.choice(('rmsnorm', 'layernorm'))}(x)",
                    f"x = delta(x, {self.sublayer(h)}, {h}{beta})"]
        if kind == "width_route":
            groups = self.d.choice([g for g in (2, 3, 4, 6, 8) if self.width % g == 0])
            shared = self.d.integer(0, groups - 1)
            k = self.d.integer(1, groups - shared)
            m, w = self.fresh("m"), self.fresh("w")
            opts = "".join(f", {name}={lit(not default)}"
                           for name, default in bool_flags("width_route").items()
                           if self.d.boolean(0.25))
            sh = f", shared={shared}" if shared else ""
            return [f"{m}, {w} = width_route(x, groups={groups}{sh}, k={k}{opts})",
                    f"x = x + {w} * group_fuse({self.sublayer(self.norm('x') + ' * ' + m)}, "
                    f"groups={groups})"]
        if kind == "gate_head":
            # satformer's value gate: per kv head multipliers on an earlier attention's values
            heads, kv, rope = self.heads()
            norope = "" if rope else ", rope=false"
            kvs = f", kv_heads={kv}" if kv != heads else ""
            a, g = self.fresh("a"), self.fresh("g")
            act = self.d.choice(literal_options("gate", "act"))
            acts = "" if act == "sigmoid" else f", act={lit(act)}"
            self.features.add("attention")
            return [f"{a} = attention({self.norm('x')}, heads={heads}{kvs}{norope})",
                    f"x = x + {a}",
                    f"{g} = gate({self.norm('x')}, per=\"head\", units={kv}{acts})",
                    f"x = x + attention({self.norm('x')}, heads={heads}{kvs}{norope}, "
                    f"v_add={g} * {a}.v)"]
        if kind == "rotate":
            parts, dc = self.d.choice(self.partitions(rotate=True))
            dcs = f", dc={dc}" if dc else ""
            return [f"x = rotate(x + {self.sublayer(self.norm('x'))}, parts={parts}{dcs})"]
        if kind == "init_state":
            st, core = self.fresh("s"), self.fresh("core")
            mode = self.d.choice(literal_options("init_state", "init"))
            opts = "" if mode == "zeros" and self.d.boolean() else f", init={lit(mode)}"
            if mode == "trunc_normal" and self.d.boolean():
                opts += f", std={self.d.choice((0.02, 0.5))}"
            if self.d.boolean(0.3):
                opts += f", scale={self.d.choice((0.5, 2.0))}"
            count = str(self.d.integer(1, 3))
            if not self.in_block and self.d.boolean(0.3):
                self.runtime.setdefault("r", 2)
                count = "r max 3"
                self.features.add("runtime_loop")
            self.features.update({"loop", "shared_instance"})
            return [f"let {core} = {self.sublayer_instance()}",
                    f"{st} = init_state(x{opts})",
                    f"loop {count} {{",
                    f"  {st} = {st} + {core}({self.norm(f'{st} + x')})",
                    "}",
                    self.d.choice((f"x = x + {st}", f"x = {st}"))]
        if kind == "head_loop":
            heads, kv, rope = self.heads()
            rope = rope and self.d.boolean(0.7)
            attn, lp, nm = self.fresh("attn"), self.fresh("looped"), self.fresh("norm")
            a, o = self.fresh("a"), self.fresh("o")
            self.features.update({"attention", "loop", "shared_instance"})
            return [f"let {nm} = rmsnorm()",
                    f"let {attn} = attention(heads={heads}" + ("" if rope else ", rope=false")
                    + (f", kv_heads={kv}" if kv != heads else "") + ")",
                    f"let {lp} = head_loop(attn={attn}, heads={self.d.integer(1, heads)})",
                    f"{a} = {attn}({nm}(x))",
                    f"{o} = {a}.heads",
                    f"loop {self.d.integer(1, 2)} {{",
                    f"  {a}, {o} = {lp}({nm}(x + {a}), {a}, {o})",
                    "}",
                    f"x = x + {a}"]
        # hyper-connections: n residual streams, sublayers read and write them
        n = self.d.integer(1, 3)
        xs = self.fresh("xs")
        opts = ""
        if self.d.boolean(0.3):
            opts += f", alpha={self.d.choice((0.1, 1.0))}"
        if self.d.boolean(0.3):
            opts += f", sinkhorn_iters={self.d.choice((1, 5))}"
        body = []
        for _ in range(self.d.integer(1, 2)):
            h, c = self.fresh("h"), self.fresh("c")
            body += [f"{h}, {c} = hyper_read({xs}, n={n}{opts})",
                     f"{xs} = hyper_write({xs}, {c}, {self.sublayer(self.norm(h))}, n={n})"]
        if nest < MAX_NEST and self.d.boolean(0.4):
            body = [f"for {self.fresh('i')} in 0..{self.d.integer(1, 2)} {{",
                    *["  " + b for b in body], "}"]
            self.features.add("for")
        return [f"{xs} = streams(x, n={n})", *body, f"x = stream_merge({xs}, n={n})"]

    def statement(self, nest: int, index: str | None) -> list[str]:
        self.left -= 1
        self.nest_now = nest
        kinds = ["residual", "residual", "residual"]
        if self.left > 0 and nest < MAX_NEST:
            kinds += ["for", "loop"]
        if self.blocks:
            kinds.append("call")
        if not self.in_block:
            kinds.append("shared_kv")
        if self.d.boolean(0.4):
            kinds += ["exotic", "exotic"]
        kind = self.d.choice(kinds)
        if kind == "exotic":
            return self.exotic(nest)
        if kind == "for":
            return self.for_stack(nest)
        if kind == "loop":
            return self.loop(nest)
        if kind == "call":
            return self.block_call()
        if kind == "shared_kv":
            return self.shared_kv()
        return self.residual(index)

    # ---------------------------------------------------------------- the spec

    def block_def(self) -> list[str]:
        name = self.fresh("blk")
        has_hidden = self.d.boolean()
        params = ", hidden: int = 8" if has_hidden else ""
        self.in_block = True
        lines = []
        own_linear = False
        for _ in range(self.d.integer(1, 2)):
            if has_hidden and self.d.boolean():
                branch = f"mlp({self.norm('x')}, hidden=hidden)"
                lines.append(f"x = x + {self.wrap(branch, 'x')}")
                self.left -= 1
                own_linear = True
            else:
                made = self.statement(MAX_NEST - 1, None)
                # a plain linear for LoRA: not sigma-Reparam's, ds_linear's or an MoE's
                own_linear |= len(made) == 1 and not made[0].startswith("x = blk") and \
                    "sigma=true" not in made[0] and \
                    re.search(r"(?<![a-z_])(linear|attention|mlp|swiglu)\(", made[0]) is not None
                lines += made
        self.in_block = False
        # lora on a head loop's attention is refused (the loop reruns the projections
        # without the deltas): a block with a head loop, or calling one, is not adapted
        if any("head_loop(" in line or any(f"= {b}()" in line for b in self.looping_blocks)
               for line in lines):
            self.looping_blocks.add(name)
            own_linear = False
        self.blocks.append((name, has_hidden, own_linear))
        return [f"block {name}(x{params}) {{", *["  " + s for s in lines], "  return x", "}"]

    def spec(self) -> str:
        blocks: list[str] = []
        for _ in range(self.d.integer(0, 2)):
            blocks += self.block_def() + [""]
        stmts: list[str] = []
        for _ in range(self.d.integer(1, 3)):
            if self.left <= 0:
                break
            stmts += self.statement(0, None)
        tied = self.d.boolean(0.7)
        head = "tied=emb" if tied else "vocab=vocab"
        params = [f"vocab: int = {self.vocab}", f"d: int = {self.width}"]
        if "r" in self.runtime:
            params.append("r: int = 2 in 1..=3 runtime")
        emb = ""
        if self.allowed("embed_scale") and self.d.boolean(0.15):
            self.features.add("embed_scale")
            emb += f", scale={self.d.choice(('2.0', 'sqrt(d)', '0.5'))}"
        emb += self.init_opts("embed")
        start = []
        dcs = [dc for dc in (1, 2, 4) if dc < self.width]
        if self.allowed("horn") and self.d.boolean(0.08):
            self.features.add("horn")
            start.append(f"x = horn(x, dc={self.d.choice(dcs)})")
        lines = [f"model fz({', '.join(params)})", "", *blocks,
                 f"let emb = embed(vocab=vocab, dim=d{emb})", "x = emb(tokens)", *start, *stmts,
                 f"return lm_head({self.norm('x', final=True)}, {head})", ""]
        return "\n".join(lines)


def generate(draw: Draw, avoid=frozenset()) -> Case:
    """One valid spec drawn from `draw`, without the constructs named in `avoid` (feature
    names, see `Case.features`): how a test keeps away from a construct whose bug is
    another area's open work."""
    gen = _Gen(draw, draw.choice(VOCABS), draw.choice(WIDTHS), frozenset(avoid))
    text = gen.spec()
    return Case(text, gen.vocab, gen.width, gen.features, dict(gen.runtime))


def generate_seeded(seed: int, avoid=frozenset()) -> Case:
    return generate(RandomDraw(seed), avoid)
