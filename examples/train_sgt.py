"""Train the Sparse Growing Transformer (specs/sgt.arch) on CPU and watch it grow.

    .venv/bin/python examples/train_sgt.py                 # 300 steps, 1-1.5 minutes
    .venv/bin/python examples/train_sgt.py --steps 20      # a quick smoke run

The task: character-level language modelling of a short English corpus built into this
file (six paragraphs, about 2.6 KB, written for it). Characters are mapped to a small
vocabulary (one id per distinct character, 37); the last 10% of the text is held out. Each
step takes a batch of random 64-character windows from the training part and minimises the
next-character cross-entropy. A character model is the smallest task where attention
matters (copying spellings, words and phrases seen earlier in the window) that needs no
download and learns visibly in a few hundred CPU steps. The corpus is tiny, so the model
ends up memorising it: the training loss falls from ln(37) = 3.6 to about 0.2 in 300
steps, while the held-out loss bottoms out near 2.3 around step 75 and then rises. Both
are printed; the point of the example is the growth mechanics, not generalisation.

SGT adds recurrence to a few attention heads per layer, deepest layer first. The script
passes `start` and `every` to `archc.build` so that every layer grows during the run
(by default the deepest layer at 25% of the steps, then one layer every 12.5%), calls
`model.set_step(step)` before each step, and logs each growth event: which layer grew at
which step, which heads its HeadLoop chose (`layer.looped.heads`, read after the first
forward past the layer's onset), and the per-head attention entropies on the loop input
it chose them from (the highest-entropy heads loop). At the end it prints the mean
training loss per window of steps with the held-out loss at the window's end, a greedy
sample and the run time (about 60-80 s for 300 steps on one thread of a busy 2-core
machine).

Generation slides a window of the last `--seq` characters (the length the model was
trained on) and runs it again for every new character. `model.new_cache` would decode
exactly, grown layers included (their looped heads keep their own cache slots), but a
cache only ever lengthens the context.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))   # run from a checkout without installing

import archc  # noqa: E402

SPEC = ROOT / "specs" / "sgt.arch"

CORPUS = """\
The lighthouse keeper climbed the stairs every evening at the same hour. There were one
hundred and twelve steps, and he counted them aloud, because counting kept the wind out of
his head. At the top he trimmed the wick, polished the great lens, and lit the lamp. Then
he sat by the window and wrote in the log: the date, the weather, the ships that passed.
Most nights the log said the same thing. Wind from the west. Sea moderate. No ships.

In the spring a girl came to the island to count birds. She carried a notebook, a pair of
field glasses and a tin of biscuits, and she asked the keeper whether she might climb the
tower to look at the cliffs. He said that she might, if she counted the steps. She counted
one hundred and twelve, the same as he did, and he decided that she could be trusted.

Every morning she walked along the cliffs and counted the birds that nested there: the
gulls, the puffins, the terns and the gannets. Every evening she wrote the numbers in her
notebook, and the keeper wrote the weather in his log. Sometimes they compared the two.
When the wind came from the north, there were fewer gulls on the ledges. When the sea was
calm, the puffins came in close to the rocks. When a ship passed, the terns rose and
circled and settled again.

A map is a promise that the world will stay where you left it. The keeper had a map of
the island on the wall, drawn by the keeper before him, and he had added to it over the
years: a rock that appeared at low tide, a spring of fresh water, a path that the rain had
washed away. The girl added the nests. By the end of the summer the map had more birds on
it than roads, and the keeper said that this was how a map ought to be.

In the autumn the storms came. The wind rose from the west and then from the north, and
the sea broke over the lower rocks and ran white across the path. The keeper climbed the
stairs twice a night to see to the lamp. The girl counted the steps with him, one hundred
and twelve, and at the top they watched the beam swing out over the water and come back.
A ship passed in the dark, its lights low and steady, and the keeper wrote it in the log.

When the girl left the island she gave the keeper a copy of her notebook, and he gave her
a page of his log. The notebook said how many birds had nested on the cliffs. The log said
which way the wind had blown. Neither was complete without the other, they agreed, and
neither was complete at all, because the birds would come back in the spring and the wind
would keep on blowing, and someone would have to climb the stairs and count.
"""


# ---------------------------------------------------------------------------- data

class CharData:
    def __init__(self, text: str, seq: int, holdout: float = 0.1):
        self.chars = sorted(set(text))
        self.stoi = {c: i for i, c in enumerate(self.chars)}
        ids = torch.tensor([self.stoi[c] for c in text], dtype=torch.long)
        cut = int(len(ids) * (1 - holdout))
        self.train, self.val = ids[:cut], ids[cut:]
        self.seq = seq

    @property
    def vocab(self) -> int:
        return len(self.chars)

    def batch(self, n: int, g: torch.Generator, split: str = "train") -> torch.Tensor:
        data = self.train if split == "train" else self.val
        starts = torch.randint(0, len(data) - self.seq, (n,), generator=g)
        return torch.stack([data[s:s + self.seq] for s in starts.tolist()])

    def windows(self, split: str = "val") -> torch.Tensor:
        data = self.train if split == "train" else self.val
        n = (len(data) - 1) // self.seq
        return data[:n * self.seq].reshape(n, self.seq)

    def decode(self, ids) -> str:
        return "".join(self.chars[i] for i in ids)


def lm_loss(logits: torch.Tensor, toks: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), toks[:, 1:].reshape(-1))


# ---------------------------------------------------------------------------- progress

class Progress:
    """A one-line text progress bar on stderr; off a terminal, a line every 10%."""

    def __init__(self, total: int, width: int = 30):
        self.total, self.width, self.t0 = total, width, time.perf_counter()
        self.tty = sys.stderr.isatty()
        self.next_line = 0

    def update(self, done: int, note: str = "") -> None:
        frac = done / self.total
        rate = done / max(time.perf_counter() - self.t0, 1e-9)
        eta = (self.total - done) / max(rate, 1e-9)
        bar = "#" * int(frac * self.width) + "." * (self.width - int(frac * self.width))
        line = f"[{bar}] {done}/{self.total} {rate:5.1f} it/s eta {eta:4.0f}s {note}"
        if self.tty:
            sys.stderr.write("\r" + line)
            if done == self.total:
                sys.stderr.write("\n")
            sys.stderr.flush()
        elif frac * 100 >= self.next_line or done == self.total:
            print(line, file=sys.stderr, flush=True)
            self.next_line = int(frac * 10 + 1) * 10

    def say(self, text: str) -> None:
        """Print a line without tearing the bar."""
        if self.tty:
            sys.stderr.write("\r" + " " * (self.width + 60) + "\r")
            sys.stderr.flush()
        print(text, flush=True)


# ---------------------------------------------------------------------------- growth events

def head_entropies(layer, h: torch.Tensor, rope) -> torch.Tensor:
    """Mean causal attention entropy per head of `layer.attn` on input h [B, T, d], the
    statistic the HeadLoop ranks heads by (here only for the log)."""
    attn, n = layer.attn, layer.looped.n_heads
    B, T, _ = h.shape

    def split(t):
        return t.reshape(B, T, n, -1).transpose(1, 2)
    q, k = split(attn.q(h)), split(attn.k(h))
    if rope is not None:
        cos, sin = rope

        def rot(x):
            x1, x2 = x.chunk(2, dim=-1)
            return x * cos + torch.cat([-x2, x1], dim=-1) * sin
        q, k = rot(q), rot(k)
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    p = scores.softmax(-1)
    return -(p * p.clamp_min(1e-30).log()).sum(-1).mean(dim=(0, 2))


class GrowthWatch:
    """Finds the layers that grow in this step's forward (past their onset, heads not yet
    chosen) and, the first time their HeadLoop runs, computes the per-head entropies on its
    input (before the optimizer step changes the weights)."""

    def __init__(self, model, step: int):
        self.seen, self.hooks = {}, []
        for i, layer in enumerate(model.layers):
            if step >= layer.onset and not bool(layer.looped.chosen):
                self.hooks.append(layer.looped.register_forward_pre_hook(self._hook(i, layer)))

    def _hook(self, i, layer):
        def hook(module, args):
            if i not in self.seen:
                h, rope = args[0], args[4] if len(args) > 4 else None
                with torch.no_grad():
                    self.seen[i] = head_entropies(layer, h.detach(), rope)
        return hook

    def report(self, model, step: int, losses: list[float]) -> list[str]:
        for h in self.hooks:
            h.remove()
        lines = []
        for i, ent in sorted(self.seen.items(), reverse=True):
            layer = model.layers[i]
            assert bool(layer.looped.chosen)
            heads = layer.looped.heads.tolist()
            ranked = ", ".join(f"h{j}={e:.3f}" for j, e in
                               sorted(enumerate(ent.tolist()), key=lambda t: -t[1]))
            lines.append(f"step {step:5d}  growth: layer {i} (onset {layer.onset}) now loops "
                         f"heads {heads}  [entropy {ranked}]  batch loss {losses[-1]:.3f}"
                         + (f" (step before: {losses[-2]:.3f})" if len(losses) > 1 else ""))
        return lines


# ---------------------------------------------------------------------------- main

@torch.no_grad()
def evaluate(model, data: CharData) -> float:
    model.eval()
    w = data.windows("val")
    loss = lm_loss(model(w), w).item()
    model.train()
    return loss


@torch.no_grad()
def generate(model, data: CharData, prompt: str, n: int) -> str:
    model.eval()
    ids = [data.stoi[c] for c in prompt]
    for _ in range(n):
        ctx = torch.tensor([ids[-data.seq:]])
        ids.append(int(model(ctx)[0, -1].argmax()))
    model.train()
    return data.decode(ids)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--start", type=int, default=None, help="onset of the deepest layer "
                    "(default: a quarter of the steps)")
    ap.add_argument("--every", type=int, default=None, help="steps between onsets "
                    "(default: an eighth of the steps)")
    ap.add_argument("--window", type=int, default=50, help="steps per row of the loss summary")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: on a shared "
                    "or 2-core machine, more threads mostly spin at this model size)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(args.seed)
    data = CharData(CORPUS, args.seq)
    start = args.start if args.start is not None else max(1, args.steps // 4)
    every = args.every if args.every is not None else max(1, args.steps // 8)
    params = dict(vocab=data.vocab, d=64, depth=4, heads=8, hidden=172,
                  loop_heads=1, loops=1, start=start, every=every)
    model = archc.build(str(SPEC), **params)  # archc's LM init: starts near ln(vocab)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"sgt {params}")
    print(f"{n_params:,} parameters; corpus {len(CORPUS)} chars, vocab {data.vocab}, "
          f"{len(data.train)} train / {len(data.val)} held-out")
    print("onsets (step at which each layer starts looping): "
          + ", ".join(f"layer {i}: {layer.onset}" for i, layer in enumerate(model.layers)))

    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01,
                            betas=(0.9, 0.95))
    warmup = max(1, args.steps // 20)

    def lr_at(step):
        if step < warmup:
            return args.lr * (step + 1) / warmup
        t = (step - warmup) / max(1, args.steps - warmup)
        return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))

    losses, growth, val_losses = [], [], {}
    bar = Progress(args.steps)
    model.train()
    for step in range(args.steps):
        model.set_step(step)
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        watch = GrowthWatch(model, step)
        toks = data.batch(args.batch, g)
        loss = lm_loss(model(toks), toks)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        if (step + 1) % args.window == 0 or step + 1 == args.steps:
            val_losses[step] = evaluate(model, data)
        for line in watch.report(model, step, losses):
            growth.append(line)
            bar.say(line)
        bar.update(step + 1, f"loss {losses[-1]:.3f}")
    train_s = time.perf_counter() - t0

    print("\nmean training loss per window:")
    for a in range(0, args.steps, args.window):
        b = min(a + args.window, args.steps)
        grown = sum(b - 1 >= layer.onset for layer in model.layers)
        chunk = losses[a:b]
        print(f"  steps {a:4d}-{b - 1:4d}  train loss {sum(chunk) / len(chunk):.3f}  "
              f"held-out loss at step {b - 1}: {val_losses[b - 1]:.3f}  "
              f"(layers grown: {grown}/{len(model.layers)})")
    print(f"(uniform guess: ln {data.vocab} = {math.log(data.vocab):.3f})")
    print(f"growth events: {len(growth)} of {len(model.layers)} layers")
    print("sample:", repr(generate(model, data, "The keeper ", 60)))
    print(f"run time {time.perf_counter() - t0:.1f}s (training {train_s:.1f}s, "
          f"{args.steps / train_s:.1f} steps/s on {args.threads} threads)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
