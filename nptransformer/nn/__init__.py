"""torch.nn-shaped layers with hand-written backward passes."""

from .module import Module, ModuleList, Parameter

__all__ = ["Module", "ModuleList", "Parameter"]
