"""Which names may reach generated Python.

Spec names become Python locals, attributes and class names in the generated module.
Locals, class names and loop variables never collide with the generated code's own names:
the backend mangles them (archc/codegen/namespace.py). What is checked here is what cannot
be mangled: an identifier (the grammar guarantees that), not a Python keyword, not a
dunder, and not an attribute that nn.Module, its containers or the generated model already
use (a child called `train`, `items` or `new_cache` would shadow a method; its name is its
state-dict key, so it cannot be renamed). The lists are written out so that
`archc check` does not need to import torch.
"""

from __future__ import annotations

import keyword

from .errors import ArchcError, Span

# Attributes of torch.nn.Module, ModuleList and ModuleDict that a child name would shadow.
_MODULE_ATTRS = frozenset("""
T_destination add_module append apply bfloat16 buffers call_super_init children clear
compile cpu cuda double dump_patches eval extend extra_repr float forward get_buffer
get_extra_state get_parameter get_submodule half insert ipu items keys load_state_dict
modules mtia named_buffers named_children named_modules named_parameters parameters pop
register_backward_hook register_buffer register_forward_hook register_forward_pre_hook
register_full_backward_hook register_full_backward_pre_hook register_load_state_dict_post_hook
register_load_state_dict_pre_hook register_module register_parameter register_state_dict_hook
register_state_dict_pre_hook requires_grad_ set_extra_state set_submodule share_memory
state_dict to to_empty train training type update values xpu zero_grad
""".split())

# Methods and attributes the generated model itself has (archc/codegen/torch/emit.py,
# archc/api.py): an instance or label of that name would hide them, and renaming the
# module instead would change its state-dict names.
_GENERATED_ATTRS = frozenset("""
new_cache set_step aux_loss scan_mode queries finish archc_spec
""".split())

# Keywords a call of the built model takes besides the run-time params: forward's
# `cache=`, `seed=` (init_state noise), and `self` (nn.Module.__call__(self, *args,
# **kwargs) binds it first).
FORWARD_KEYWORDS = frozenset({"cache", "seed", "self"})


# What becomes an attribute of a generated module (`self.<name>`): instances, stack
# labels and block params (kept per instance). Other names are locals or class names,
# which the backend mangles.
_ATTRIBUTES = frozenset({"instance", "label", "param"})


def check(name: str, span: Span | None, what: str = "name") -> str:
    """Return `name` if it can be a Python identifier in generated code, else raise."""
    if keyword.iskeyword(name) or keyword.issoftkeyword(name):
        raise ArchcError(f"`{name}` is a Python keyword and cannot name a {what}", span,
                         f"rename it, e.g. `{name}_`", code="A010")
    attribute = what in _ATTRIBUTES and (name in _MODULE_ATTRS or name in _GENERATED_ATTRS)
    if name.startswith("__") or attribute:
        raise ArchcError(f"`{name}` is reserved and cannot name a {what}", span,
                         f"it would shadow an attribute of the built module; try `{name}_`",
                         code="A010")
    return name


def check_runtime_param(name: str, span: Span | None) -> str:
    """A run-time param is a keyword of the model's forward (`m(tokens, r=16)`), so it
    cannot take the name of one of forward's own keywords. Every other name works: the
    backend mangles its local where the generated code needs the name
    (archc/codegen/namespace.py)."""
    if name in FORWARD_KEYWORDS:
        raise ArchcError(f"run-time param `{name}` has the name of a keyword of the model's "
                         "forward", span, f"`m(tokens, {name}=...)` is taken; rename the "
                         f"param, e.g. `{name}_`", code="A010")
    return name
