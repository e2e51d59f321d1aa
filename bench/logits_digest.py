"""Digests of every spec's logits, to show a refactor computes the same thing bit for bit.

    .venv/bin/python bench/logits_digest.py > before.txt   # on the old commit
    .venv/bin/python bench/logits_digest.py > after.txt    # on the new one
    diff before.txt after.txt

Each spec in specs/ is built with its defaults under a fixed seed, in train and infer mode,
and run on fixed tokens (train mode under torch.no_grad with dropout-like choices seeded);
where the model decodes with a KV cache, the logits of a token-by-token decode are digested
too. A line is `spec mode sha256-prefix`; bit-identical logits give identical lines.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import archc  # noqa: E402
from archc.errors import ArchcError  # noqa: E402


def digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().float().contiguous().numpy().tobytes()).hexdigest()[:16]


def run(path: Path, mode: str) -> list[str]:
    torch.manual_seed(0)
    m = archc.build(str(path), mode=mode)
    vocab = m.archc_spec.program.params.get("vocab")
    n = int(getattr(vocab, "value", 0) or 0) or 64
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, min(n, 64), (2, 12), generator=g)
    rows = []
    with torch.no_grad():
        torch.manual_seed(2)
        rows.append(f"{path.stem} {mode} {digest(m(tokens))}")
        if mode == "infer":
            try:
                cache = m.new_cache(batch=2, max_len=12)
            except ArchcError:
                return rows
            steps = [m(tokens[:, i:i + 1], cache=cache) for i in range(tokens.shape[1])]
            rows.append(f"{path.stem} decode {digest(torch.cat(steps, 1))}")
    return rows


def main() -> None:
    torch.set_num_threads(1)
    for path in sorted((ROOT / "specs").glob("*.arch")):
        for mode in ("train", "infer"):
            for row in run(path, mode):
                print(row, flush=True)


if __name__ == "__main__":
    main()
