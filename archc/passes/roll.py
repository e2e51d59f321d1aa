"""roll: consecutive identical applications of shared weights become one loop region.

A spec that writes `x = core(x)` three times, `core` being one `let` instance, means a
recurrence: the same weights applied three times in a row. This pass finds such runs and
writes them as one static `loop` region of count 3, the form elaboration gives
`loop 3 { x = core(x) }`. It is the inverse of `unroll` on loops that share their
weights: roll(unroll(p)) == p, up to the loop's variable and label names (which it picks
fresh: `i`, `loop`, as elaboration does by default). The generated code is a loop instead
of n copies of the same lines.

What counts as a run: a window of L >= 1 nodes repeated n >= 2 times back to back, each
repetition with the same ops, attributes, module refs (so the same weights: a per-iteration
ref such as `layers[0]`, `layers[1]` never matches) and types, wired the same way: each
input of repetition m + 1 is its own value, the same outer value as in repetition m (a
capture), or a value repetition m made (carried state, of unchanged type). Each
repetition applies at least one module. Of the longest runs the shortest window wins.

How runs are found in near-linear time (the result is the exhaustive search's): each
node's signature is computed once and interned as a number, so a graph is a string of
numbers; a run of window L repeats its window's numbers with period L, so a window length
is tried only if the node L ahead has the same number, the window holds no node whose
number never recurs, and the period-L stretch (measured with prefix hashes) is long
enough to beat the best run so far.

Invariant: the loop computes the same values in the same order (the same ops, the same
draws of randomness, the same KV-cache slots in the same order). Values bound inside the
run must not be used elsewhere: only the last repetition's carried values leave it, as
the loop's outputs, under the ids they had. Nothing is rolled when `PassOptions.unroll`
asks for straight-line code, nor in a block whose attention reads its own past output
(that block runs as a scan that a loop would break).
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass, field

from ..graph_ops import graph_shape, node_signature
from ..ir import BlockDef, Count, Graph, Loop, Node, Program, next_value_id, walk
from .pipeline import DEFAULTS, Pass, PassOptions


@dataclass
class _Wiring:
    """Where each input of a repetition comes from, by (node, slot) in the window: a value
    of the same repetition, an outer value (a capture), or the previous repetition's
    (node, output) (carried state; the first repetition reads the loop's init there)."""

    internal: dict[tuple[int, int], tuple[int, int]] = field(default_factory=dict)
    captured: dict[tuple[int, int], str] = field(default_factory=dict)
    carried: dict[tuple[int, int], tuple[int, int]] = field(default_factory=dict)
    inits: dict[tuple[int, int], str] = field(default_factory=dict)  # (node, out) -> init
    captures: dict[str, None] = field(default_factory=dict)  # outer values, in order


class _Roller:
    def __init__(self, block: BlockDef, program: Program):
        self.next_id = next_value_id(block.graph)
        taken = {name for name, _ in block.modules}
        taken |= {n.loop.label for n in walk(block.graph) if n.op == "loop"}
        self.labels = taken
        self.reserved = set(program.params) | {block.iteration or ""}
        for node in walk(block.graph):
            self.reserved |= set(node.body.names.values()) if node.body is not None else set()
        self.reserved |= set(block.graph.names.values())

    def fresh(self) -> str:
        self.next_id += 1
        return f"%{self.next_id - 1}"

    def label(self) -> str:
        name, n = "loop", 0
        while name in self.labels:
            n += 1
            name = f"loop_{n}"
        self.labels.add(name)
        return name

    # ------------------------------------------------------------------------- graphs

    def graph(self, graph: Graph, loop_vars: tuple[str, ...]) -> Graph:
        """Roll the runs of a graph (bodies first)."""
        nodes = []
        for node in graph.nodes:
            if node.body is not None:
                inner = loop_vars + (node.loop.var,)
                node = node.model_copy(update={"body": self.graph(node.body, inner)})
            nodes.append(node)
        users = _users(nodes, graph.outputs)
        sigs = _Signatures(nodes)
        runs = []  # (start, length, count, wiring), left to right, not overlapping
        i = 0
        while i < len(nodes):
            found = self.best_run(nodes, sigs, i, users, graph.types)
            if found is None:
                i += 1
                continue
            runs.append((i,) + found)
            i += found[0] * found[1]
        kept = list(reversed(runs))
        out = Graph(graph.inputs)
        out.names = dict(graph.names)
        i = 0
        for start, length, count, wiring in reversed(kept):
            for node in nodes[i:start]:
                out.add(node)
            window = nodes[start:start + length]
            last = nodes[start + length * (count - 1):start + length * count]
            out.add(self.loop(window, last, count, wiring, graph, loop_vars))
            i = start + length * count
        for node in nodes[i:]:
            out.add(node)
        out.outputs = list(graph.outputs)
        return out

    def best_run(self, nodes: list[Node], sigs: "_Signatures", i: int,
                 users: dict[str, set], types: dict) -> tuple | None:
        """The run starting at node i that covers most nodes (of those, the shortest
        window), or None. Window lengths that cannot beat the best so far are skipped
        without being tried (see _Signatures)."""
        best = None
        covered = 0  # nodes the best run so far covers
        for length in sigs.lengths(i):
            if covered >= len(nodes) - i:
                break  # nothing can cover more
            if sigs.bound(i, length) <= covered or not sigs.applies(i, length):
                continue
            window = nodes[i:i + length]
            wiring = _wiring(window, nodes[i + length:i + 2 * length], types,
                             sigs.ids[i:i + length], sigs.ids[i + length:i + 2 * length])
            if wiring is None:
                continue
            count = 2
            while i + length * (count + 1) <= len(nodes) and _follows(
                    wiring, nodes[i + length * (count - 1):i + length * count],
                    nodes[i + length * count:i + length * (count + 1)],
                    sigs.same(i + length * (count - 1), i + length * count, length)):
                count += 1
            count = _contained_count(nodes, i, length, count, wiring, users)
            if count >= 2 and length * count > covered:
                best = (length, count, wiring)
                covered = length * count
        return best

    def loop(self, window: list[Node], last: list[Node], count: int, wiring: _Wiring,
             graph: Graph, loop_vars: tuple[str, ...]) -> Node:
        states = list(wiring.inits)  # (node, out) of each carried value, in order
        inits = [wiring.inits[pos] for pos in states]
        captures = list(wiring.captures)
        state_ids = {pos: self.fresh() for pos in states}
        capture_ids = {v: self.fresh() for v in captures}
        body = Graph([(state_ids[pos], graph.types[v]) for pos, v in zip(states, inits)] +
                     [(capture_ids[v], graph.types[v]) for v in captures])
        for p, node in enumerate(window):
            inputs = []
            for s, v in enumerate(node.inputs):
                if (p, s) in wiring.carried:
                    v = state_ids[wiring.carried[(p, s)]]
                elif (p, s) in wiring.captured:
                    v = capture_ids[v]
                inputs.append(v)
            body.add(node.model_copy(update={"inputs": tuple(inputs)}))
        body.outputs = [window[q].outs[k] for q, k in states]
        outs = tuple(last[q].outs[k] for q, k in states)
        names = graph.names
        body.names = {vid: names[v] for v, vid in capture_ids.items() if v in names}
        body.names.update((state_ids[pos], names[v]) for pos, v in zip(states, inits)
                          if v in names)
        for node in window:
            body.names.update((o, names[o]) for o in node.outs if o in names)
        for (q, k), v in zip(states, inits):  # the state keeps its name through the body
            if v in names:
                body.names[window[q].outs[k]] = names[v]
        hint = ",".join(names.get(v, names.get(o, "x")) for v, o in zip(inits, outs))
        loop = Loop(kind="loop", var=self.var(loop_vars), count=Count(value=count),
                    label=self.label())
        return Node(op="loop", outs=outs, types=tuple(graph.types[v] for v in inits),
                    inputs=tuple(inits + captures), span=window[0].span, hint=hint,
                    body=body, loop=loop)

    def var(self, loop_vars: tuple[str, ...]) -> str:
        for name in ("i", "j", "k", "n", "m"):
            if name not in loop_vars and name not in self.reserved:
                return name
        n = 0
        while f"i{n}" in loop_vars or f"i{n}" in self.reserved:
            n += 1
        return f"i{n}"


_MOD = (1 << 61) - 1  # a Mersenne prime: prefix hashes of signature strings
_BASE = 1_000_003


class _Signatures:
    """A graph's nodes as a string of interned signature numbers, with what best_run
    needs to skip window lengths that cannot win, each answered without comparing
    nodes: the lengths worth trying at a position, an upper bound on what a run of a
    given window covers, and whether a window applies a module.

    The bound is exact-safe: it comes from the longest stretch with period L, found by
    binary search over prefix hashes; a hash collision can only lengthen that stretch
    (a looser bound, more work), never shorten it, so no winning run is ever skipped."""

    def __init__(self, nodes: list[Node]):
        numbers: dict[tuple, int] = {}
        self.ids = [numbers.setdefault(node_signature(n), len(numbers)) for n in nodes]
        n = len(nodes)
        self.where: dict[int, list[int]] = {}
        for k, sid in enumerate(self.ids):
            self.where.setdefault(sid, []).append(k)
        # first[k]: the first position >= k whose number never occurs again after it. A
        # window must end before it: every node of a window recurs one window later.
        self.first = [n] * (n + 1)
        last_seen: set[int] = set()
        for k in range(n - 1, -1, -1):
            recurs = self.ids[k] in last_seen
            last_seen.add(self.ids[k])
            self.first[k] = self.first[k + 1] if recurs else k
        self.refs = [0] * (n + 1)  # prefix counts of nodes that apply a module
        for k, node in enumerate(nodes):
            self.refs[k + 1] = self.refs[k] + (node.ref is not None)
        self.hash = [0] * (n + 1)
        self.power = [1] * (n + 1)
        for k, sid in enumerate(self.ids):
            self.hash[k + 1] = (self.hash[k] * _BASE + sid + 1) % _MOD
            self.power[k + 1] = self.power[k] * _BASE % _MOD

    def lengths(self, i: int):
        """Window lengths to try at i, shortest first: the node one window ahead has
        node i's number, and the window ends before a node that never recurs."""
        most = min((len(self.ids) - i) // 2, self.first[i] - i)
        occurrences = self.where[self.ids[i]]
        lo = bisect_right(occurrences, i)
        hi = bisect_right(occurrences, i + most)
        for k in range(lo, hi):
            yield occurrences[k] - i

    def applies(self, i: int, length: int) -> bool:
        return self.refs[i + length] > self.refs[i]

    def _substring(self, start: int, length: int) -> int:
        return (self.hash[start + length] - self.hash[start] * self.power[length]) % _MOD

    def same(self, a: int, b: int, length: int) -> bool:
        """Do positions a.. and b.. hold the same numbers for `length` nodes (exact)?"""
        return self.ids[a:a + length] == self.ids[b:b + length]

    def bound(self, i: int, length: int) -> int:
        """At most how many nodes a run of this window starting at i covers (0: it
        cannot repeat even twice)."""
        lo, hi = 0, len(self.ids) - i - length  # stretch of period `length` beyond i
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self._substring(i, mid) == self._substring(i + length, mid):
                lo = mid
            else:
                hi = mid - 1
        if lo < length:
            return 0
        return length * (1 + lo // length)


def _users(nodes: list[Node], outputs: list[str]) -> dict[str, set]:
    """value -> positions of the nodes reading it (-1: a graph output)."""
    users: dict[str, set] = {}
    for k, node in enumerate(nodes):
        for v in node.inputs:
            users.setdefault(v, set()).add(k)
    for v in outputs:
        users.setdefault(v, set()).add(-1)
    return users


def _wiring(first: list[Node], second: list[Node], types: dict, first_ids: list[int],
            second_ids: list[int]) -> _Wiring | None:
    """How `second` repeats `first` (their nodes' signature numbers given), or None if
    it does not."""
    if first_ids != second_ids:
        return None
    made = {o: (p, k) for p, node in enumerate(first) for k, o in enumerate(node.outs)}
    made2 = {o: (p, k) for p, node in enumerate(second) for k, o in enumerate(node.outs)}
    w = _Wiring()
    for p, (a_node, b_node) in enumerate(zip(first, second)):
        for s, (a, b) in enumerate(zip(a_node.inputs, b_node.inputs)):
            if a in made:
                if made2.get(b) != made[a]:
                    return None
                w.internal[(p, s)] = made[a]
            elif b == a:
                w.captured[(p, s)] = a
                w.captures[a] = None
            elif b in made:
                pos = made[b]
                if w.inits.setdefault(pos, a) != a:
                    return None  # one state, two different initial values
                w.carried[(p, s)] = pos
            else:
                return None
    for (q, k), a in w.inits.items():
        if first[q].types[k] != types[a]:
            return None  # a loop keeps the type of what it carries
    return w


def _follows(w: _Wiring, prev: list[Node], nxt: list[Node], same: bool) -> bool:
    """Does `nxt` repeat `prev` with the wiring the run started with? (`same`: do their
    nodes have the same signatures.)"""
    if not same:
        return False
    for p, (a_node, b_node) in enumerate(zip(prev, nxt)):
        for s, b in enumerate(b_node.inputs):
            if (p, s) in w.internal:
                q, k = w.internal[(p, s)]
                want = nxt[q].outs[k]
            elif (p, s) in w.captured:
                want = w.captured[(p, s)]
            else:
                q, k = w.carried[(p, s)]
                want = prev[q].outs[k]
            if b != want:
                return False
    return True


def _private(nodes: list[Node], start: int, length: int, w: _Wiring,
             users: dict[str, set], last: bool) -> bool:
    """Are the values of the repetition at `start` read only where a run allows? Inside
    the repetition; carried state also by the next one, or, in the last repetition,
    anywhere (it leaves the loop as its outputs)."""
    for p in range(length):
        for k, o in enumerate(nodes[start + p].outs):
            carried = (p, k) in w.inits
            if last and carried:
                continue  # the loop's outputs
            limit = start + (2 * length if carried and not last else length)
            if any(r == -1 or r < start or r >= limit for r in users.get(o, ())):
                return False
    return True


def _contained_count(nodes: list[Node], i: int, length: int, count: int, w: _Wiring,
                     users: dict[str, set]) -> int:
    """The most repetitions, at most `count`, whose values are read only inside the run
    (the last repetition's carried values excepted); < 2 if none. A repetition before
    the last is checked the same way whatever the count, so each is checked once."""
    inner = 0  # repetitions 0 .. inner-1 are private as inner repetitions
    while inner < count - 1 and _private(nodes, i + length * inner, length, w, users, False):
        inner += 1
    for c in range(min(count, inner + 1), 1, -1):
        if _private(nodes, i + length * (c - 1), length, w, users, True):
            return c
    return 0


def _scans(block: BlockDef) -> bool:
    return any(n.op == "scan_attend" for n in block.graph.nodes)


def roll(program: Program, options: PassOptions = DEFAULTS) -> Program:
    if options.unroll:
        return program
    classes = dict(program.classes)
    for cls, block in program.classes.items():
        if _scans(block):
            continue
        graph = _Roller(block, program).graph(block.graph, ())
        classes[cls] = block.model_copy(update={"graph": graph})
    return program.model_copy(update={"classes": classes})


PASS = Pass("roll", fn=roll,
            doc="consecutive identical applications of shared weights -> one loop region")
