"""nptransformer: Transformers in plain array code, every backward written by hand.

>>> import nptransformer as npt
>>> npt.backend.get_backend()
'numpy'
"""

__version__ = "0.1.0"

from . import backend
from .grad_mode import is_grad_enabled, no_grad

__all__ = ["__version__", "backend", "no_grad", "is_grad_enabled"]
