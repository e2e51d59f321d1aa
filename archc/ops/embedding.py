"""Token in, logits out: the embedding and the LM head (optionally tied to it)."""

from __future__ import annotations

from typing import Any

from pydantic import ConfigDict, Field

from ..init import weight_init
from ..ir import Weight, act
from .registry import InitAttrs, op


class EmbedAttrs(InitAttrs):
    vocab: int = Field(gt=0)
    dim: int = Field(gt=0)
    scale: float = 1.0


@op("embed", EmbedAttrs, "token embedding; `scale` multiplies the output (Huginn uses sqrt(d))",
    stateful=True, reads_tokens=True)
def embed(c, tokens, a: EmbedAttrs):
    if tokens.type.dtype != "long":
        c.fail("embed reads token ids, not activations", "call it on `tokens`")
    ref = c.leaf(None, "embed", {"vocab": a.vocab, "dim": a.dim},
                 [Weight(name="weight", shape=(a.vocab, a.dim),
                         init=weight_init(a.init, a.std))])
    x = c.emit("embed", [tokens], act(a.dim), ref=ref, hint="x")
    if a.scale != 1.0:
        x = c.emit("scale", [x], x.type, {"by": a.scale}, hint="x")
    return x


class LmHeadAttrs(InitAttrs):
    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)
    vocab: int | None = Field(default=None, gt=0)
    tied: Any = None


@op("lm_head", LmHeadAttrs, "logits over the vocabulary; `tied=emb` reuses an embed's weight",
    stateful=True)
def lm_head(c, x, a: LmHeadAttrs):
    if a.tied is not None:
        ref, emb = c.tied_embed(a.tied)
        for option in ("init", "std"):
            if option in a.model_fields_set:
                c.fail(f"a tied head has no weights of its own to `{option}`",
                       "set it on the embed it is tied to", at=option)
        if a.vocab is not None and a.vocab != emb["vocab"]:
            c.fail(f"vocab={a.vocab} but the tied embed has vocab {emb['vocab']}",
                   "drop `vocab`; a tied head takes it from the embed", at="vocab")
        if emb["dim"] != x.type.width:
            c.fail(f"width mismatch: the head reads width {x.type.width} but the tied embed "
                   f"has dim {emb['dim']}", "project to the embed's width first")
        return c.emit("tied_linear", [x], act(emb["vocab"]), ref=ref, hint="logits")
    if a.vocab is None:
        c.fail("lm_head needs `vocab=` or `tied=`", "write lm_head(x, tied=emb) to share the "
               "embedding, or lm_head(x, vocab=V)")
    return c.linear(x, None, a.vocab, False, hint="logits", init=a.init, std=a.std)
