"""archc.reparam (this file: archc/fold.py): turn a trained module into its folded inference form.

The reparam pass rewrote the IR and recorded, per class, how each new weight comes from
the trained ones (`Program.folds`: small tensor expressions over state-dict keys relative
to an instance of the class). This module builds the inference module and evaluates
those expressions on the trained module's state dict; weights the pass did not touch
are copied by name.
"""

from __future__ import annotations

import math

import torch

from .runtime.reparam import sigma_weight, top_n_columns


def _value(recipe, src: dict, prefix: str):
    kind = recipe[0]
    if kind == "p":
        return src[prefix + recipe[1]]
    if kind == "add":
        return _value(recipe[1], src, prefix) + _value(recipe[2], src, prefix)
    if kind == "mul":
        return _value(recipe[1], src, prefix) * _value(recipe[2], src, prefix)
    if kind == "mul_cols":
        return _value(recipe[1], src, prefix) * _value(recipe[2], src, prefix)[None, :]
    if kind == "mul_rows":
        return _value(recipe[1], src, prefix) * _value(recipe[2], src, prefix)[:, None]
    if kind == "matvec":
        return _value(recipe[1], src, prefix) @ _value(recipe[2], src, prefix)
    if kind == "lowrank":  # a LoRA update, scale * B A
        return _value(recipe[1], src, prefix) @ _value(recipe[2], src, prefix) * recipe[3]
    if kind == "cat":
        return torch.cat([_value(r, src, prefix) for r in recipe[2]], dim=recipe[1])
    if kind == "eye":
        like = next(iter(src.values()))
        return torch.eye(recipe[1], dtype=like.dtype, device=like.device)
    if kind == "bn_scale":  # an eval BatchNorm is x * scale + shift; RepBN adds alpha
        p = prefix + recipe[1] + ("." + "bn" if recipe[2] else "")
        scale = src[p + ".weight"] / torch.sqrt(src[p + ".running_var"] + _eps(src, p))
        return scale + src[prefix + recipe[1] + ".alpha"] if recipe[2] else scale
    if kind == "bn_shift":
        base = prefix + recipe[1]
        p = base + ".bn" if (base + ".bn.weight") in src else base
        scale = src[p + ".weight"] / torch.sqrt(src[p + ".running_var"] + _eps(src, p))
        return src[p + ".bias"] - src[p + ".running_mean"] * scale
    if kind == "sigma_weight":  # SigmaLinear's effective weight, as eval computes it
        p = prefix + recipe[1]
        return sigma_weight(src[p + ".weight"], src[p + ".u"], src[p + ".gamma"])
    if kind == "ds_sparse":  # the top-nnz projection DSFormer applies each forward, once
        return top_n_columns(src[prefix + recipe[1] + ".sparse"], recipe[2])
    raise AssertionError(f"unknown fold {kind}")


_EPS: dict[str, float] = {}


def _eps(src: dict, prefix: str) -> float:
    return _EPS.get(prefix, 1e-5)


def _instances(model: torch.nn.Module, cls: str, program) -> list[str]:
    from .codegen.torch import class_names

    if cls == program.root:
        return [""]
    python = class_names(program)[cls]  # the generated class's name (it may be mangled)
    return [name + "." for name, m in model.named_modules() if type(m).__name__ == python]


def fold_state(program, trained: torch.nn.Module, deploy: torch.nn.Module) -> dict:
    """The inference module's state dict, from the trained module's."""
    src = {k: v.detach() for k, v in trained.state_dict().items()}
    for name, m in trained.named_modules():
        if isinstance(m, torch.nn.BatchNorm1d):
            _EPS[(name + ".") if name else ""] = m.eps
            _EPS[name] = m.eps
    out = {}
    wanted = set(deploy.state_dict())
    with torch.no_grad():
        for cls, target, recipe in program.folds:
            for prefix in _instances(trained, cls, program):
                if prefix + target in wanted:  # folds of merged-away branches are spent
                    out[prefix + target] = _value(recipe, src, prefix).clone()
    for key, tensor in deploy.state_dict().items():
        if key in out:
            continue
        if key not in src:
            raise KeyError(f"reparam: no trained weight for {key}")
        out[key] = src[key].clone()
    return out


def reparam(model: torch.nn.Module) -> torch.nn.Module:
    """The folded inference module of a model built by archc.build (same outputs in eval,
    fewer or cheaper ops). Training-only state (BatchNorm statistics, sigma-Reparam's u)
    is read as it is now."""
    from .api import build, compile_program

    spec = getattr(model, "archc_spec", None)
    if spec is None:
        raise TypeError("archc.reparam takes a module built by archc.build")
    program = compile_program(spec, "infer")
    deploy = build(spec, mode="infer")
    deploy.load_state_dict(fold_state(program, model, deploy))
    for name, value in vars(model).items():  # run-time state such as the training step
        if name == "step":
            deploy.step = value
    return deploy.eval()


_ = math
