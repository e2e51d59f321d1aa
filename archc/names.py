"""Which names may reach generated Python.

Spec names become Python locals, attributes and class names in the generated module, so
each is checked here: an identifier (the grammar guarantees that), not a Python keyword,
not a dunder, and not an attribute that nn.Module or its containers already use (a child
called `train` or `items` would shadow a method). The lists are written out so that
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

# Names the generated file itself uses.
_GENERATED = frozenset("""
self torch nn F rt math super
""".split())


def check(name: str, span: Span | None, what: str = "name") -> str:
    """Return `name` if it can be a Python identifier in generated code, else raise."""
    if keyword.iskeyword(name) or keyword.issoftkeyword(name):
        raise ArchcError(f"`{name}` is a Python keyword and cannot name a {what}", span,
                         f"rename it, e.g. `{name}_`", code="A010")
    if name.startswith("__") or name in _MODULE_ATTRS:
        raise ArchcError(f"`{name}` is reserved and cannot name a {what}", span,
                         f"it would shadow a torch.nn.Module attribute; try `{name}_`",
                         code="A010")
    return name


def is_generated(name: str) -> bool:
    return name in _GENERATED
