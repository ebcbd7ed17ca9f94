"""``Module`` and ``Parameter``: the torch.nn-shaped base every layer builds on.

A module's ``forward`` computes its output and, unless inside
:func:`~nptransformer.no_grad`, pushes what its ``backward`` will need onto a
stack. ``backward(dout)`` pops the newest context, adds each parameter's
gradient into ``p.grad`` and returns the gradient of every array input. The
stack is what makes a module called twice before backward correct (tied
embeddings, shared layers): backward calls come in the reverse order of the
forward calls, so each pops its own context.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Iterator

import numpy as np

from .. import backend
from ..backend import dtype_name
from ..grad_mode import is_grad_enabled


class Parameter:
    """A trainable array and its accumulated gradient.

    ``data``: the array (any shape). ``grad``: ``None`` until a backward adds
    into it, then an array of the same shape, dtype and backend.
    """

    __slots__ = ("data", "grad")

    def __init__(self, data: Any):
        self.data = data
        self.grad = None

    @property
    def shape(self) -> tuple:
        """Shape of ``data``."""
        return tuple(self.data.shape)

    @property
    def dtype(self) -> Any:
        """dtype of ``data``."""
        return self.data.dtype

    @property
    def size(self) -> int:
        """Number of elements."""
        return int(np.prod(self.shape))

    def accumulate(self, g: Any) -> None:
        """``grad += g`` (the first call takes ``g`` itself, so callers pass a fresh array)."""
        if self.grad is None:
            self.grad = g
        else:
            self.grad += g

    def __repr__(self) -> str:
        return f"Parameter(shape={self.shape}, dtype={dtype_name(self.dtype)})"


class Module:
    """Base class of layers and models; mirrors ``torch.nn.Module``.

    Subclasses set parameters and submodules as attributes, implement
    ``forward(*inputs)`` (saving with :meth:`save_for_backward`) and
    ``backward(dout)`` (restoring with :meth:`saved`).
    """

    def __init__(self) -> None:
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "_saved", [])  # [context, output shape] per forward awaiting its backward
        object.__setattr__(self, "_inline", set())
        object.__setattr__(self, "training", True)

    # -- registration -------------------------------------------------------
    def __setattr__(self, name: str, value: Any) -> None:
        if "_parameters" not in self.__dict__:
            raise RuntimeError(f"{type(self).__name__}.__init__ must call super().__init__() before setting {name!r}")
        for table in (self._parameters, self._modules, self._buffers):
            table.pop(name, None)
        self._inline.discard(name)
        if isinstance(value, Parameter):
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        object.__setattr__(self, name, value)

    def register_inline(self, name: str, module: "Module") -> None:
        """Register ``module`` as attribute ``name`` whose parameters are named as this module's own.

        Why: a Transformer layer's feed-forward is a module of its own
        (:class:`~nptransformer.nn.FeedForward`), but torch names its weights
        ``linear1.weight``, not ``feed_forward.linear1.weight``; registered
        inline, the state_dict keys stay torch's. Its children are also
        reachable as attributes of this module (``layer.linear1``).
        """
        setattr(self, name, module)
        self._inline.add(name)

    def __getattr__(self, name: str) -> Any:
        # Only reached when normal lookup fails: look into inline children (register_inline).
        inline = self.__dict__.get("_inline", ())
        for child in inline:
            child_module = self.__dict__["_modules"][child]
            if name in child_module._modules or name in child_module._parameters:
                return getattr(child_module, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def register_buffer(self, name: str, array: Any, persistent: bool = True) -> None:
        """A non-trainable array that moves with ``to()``; in ``state_dict`` when persistent."""
        object.__setattr__(self, name, array)
        self._buffers[name] = persistent

    # -- forward / backward ---------------------------------------------------
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        depth = len(self._saved)
        out = self.forward(*args, **kwargs)
        if len(self._saved) > depth:
            # Remember what this forward returned, so that its backward can refuse a gradient of
            # another shape (numpy would often broadcast it, or fail deep inside an op).
            self._saved[-1][1] = _shape_of(out[0] if isinstance(out, tuple) else out)
        return out

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Compute the output; subclasses implement it."""
        raise NotImplementedError(f"{type(self).__name__} has no forward")

    def backward(self, dout: Any) -> Any:
        """Given dL/d(output), accumulate parameter gradients and return input gradients."""
        raise NotImplementedError(f"{type(self).__name__} has no backward")

    def save_for_backward(self, ctx: Any) -> None:
        """Push what backward needs (skipped under ``no_grad``)."""
        if is_grad_enabled():
            self._saved.append([ctx, None])

    def saved(self, dout: Any = None) -> Any:
        """Pop the context of the newest forward call that has not been backpropagated.

        ``dout``: the gradient the backward was given; a ValueError names
        both shapes unless it has the shape of that forward's output (a
        Python number stands for a 0-d output, a loss).
        """
        if not self._saved:
            raise RuntimeError(
                f"{type(self).__name__}.backward called without a saved forward: call the module first "
                "(outside no_grad), and call backward once per forward"
            )
        ctx, out_shape = self._saved[-1]
        if dout is not None and out_shape is not None and _shape_of(dout) != out_shape:
            raise ValueError(
                f"{type(self).__name__}.backward: the gradient has shape {_shape_of(dout)}, but the forward it "
                f"undoes (the newest one not yet backpropagated) returned shape {out_shape}"
            )
        self._saved.pop()
        return ctx

    def clear_saved(self) -> None:
        """Drop every saved context in this module and its children (after an aborted step)."""
        for m in self.modules():
            m._saved.clear()

    # -- traversal ----------------------------------------------------------
    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, "Module"]]:
        """(name, module) for this module and every descendant, depth first."""
        seen: set[int] = set()
        stack = [(prefix, self)]
        while stack:
            name, m = stack.pop(0)
            if id(m) in seen:
                continue
            seen.add(id(m))
            yield name, m
            stack[0:0] = [(_child_name(name, k, k in m._inline), c) for k, c in m._modules.items()]

    def modules(self) -> Iterator["Module"]:
        """This module and all descendants."""
        for _, m in self.named_modules():
            yield m

    def children(self) -> Iterator["Module"]:
        """Direct submodules."""
        return iter(self._modules.values())

    def named_parameters(self) -> Iterator[tuple[str, Parameter]]:
        """(dotted name, Parameter) for every parameter; a shared one is listed once."""
        seen: set[int] = set()
        for mname, m in self.named_modules():
            for pname, p in m._parameters.items():
                if id(p) in seen:
                    continue
                seen.add(id(p))
                yield (f"{mname}.{pname}" if mname else pname), p

    def parameters(self) -> list[Parameter]:
        """Every parameter once (tied parameters are not repeated)."""
        return [p for _, p in self.named_parameters()]

    def num_parameters(self) -> int:
        """Number of trainable scalars (tied parameters counted once)."""
        return sum(p.size for p in self.parameters())

    def zero_grad(self) -> None:
        """Reset every parameter's gradient to None."""
        for p in self.parameters():
            p.grad = None

    # -- modes ------------------------------------------------------------------
    def train(self, mode: bool = True) -> "Module":
        """Training mode (dropout active) for this module and its children."""
        for m in self.modules():
            object.__setattr__(m, "training", mode)
        return self

    def eval(self) -> "Module":
        """Evaluation mode: ``train(False)``."""
        return self.train(False)

    # -- state --------------------------------------------------------------
    def _named_state(self) -> Iterator[tuple[str, Module, str, bool]]:
        for mname, m in self.named_modules():
            for pname in m._parameters:
                yield (f"{mname}.{pname}" if mname else pname), m, pname, True
            for bname, persistent in m._buffers.items():
                if persistent:
                    yield (f"{mname}.{bname}" if mname else bname), m, bname, False

    def state_dict(self) -> "OrderedDict[str, Any]":
        """Name -> array (parameters and persistent buffers), with PyTorch's key names.

        Tied parameters appear under every name that holds them, as in PyTorch.
        """
        out: OrderedDict[str, Any] = OrderedDict()
        for key, m, name, is_param in self._named_state():
            out[key] = m._parameters[name].data if is_param else getattr(m, name)
        return out

    def load_state_dict(self, state_dict: dict, strict: bool = True) -> tuple[list, list]:
        """Copy arrays (any backend, or torch tensors converted with .numpy()) into this module.

        Values are cast to each parameter's dtype and backend; NumPy arrays are
        overwritten in place (as torch's ``load_state_dict`` copies into its
        tensors), so arrays read from the module before see the new values. Returns
        (missing_keys, unexpected_keys). With ``strict`` any missing key,
        unexpected key or shape mismatch raises one KeyError/ValueError listing
        all of them.
        """
        own = {key: (m, name, is_param) for key, m, name, is_param in self._named_state()}
        missing = [k for k in own if k not in state_dict]
        unexpected = [k for k in state_dict if k not in own]
        mismatched = []
        for key, value in state_dict.items():
            if key in own:
                m, name, is_param = own[key]
                target = m._parameters[name].data if is_param else getattr(m, name)
                if tuple(np.shape(value)) != tuple(target.shape):
                    mismatched.append(f"{key}: checkpoint {tuple(np.shape(value))}, model {tuple(target.shape)}")
        if mismatched:
            raise ValueError(f"{type(self).__name__}.load_state_dict: shape mismatch for " + "; ".join(mismatched))
        if strict and (missing or unexpected):
            raise KeyError(
                f"{type(self).__name__}.load_state_dict (strict): missing keys {missing}, unexpected keys {unexpected}"
            )
        for key, value in state_dict.items():
            if key not in own:
                continue
            m, name, is_param = own[key]
            target = m._parameters[name].data if is_param else getattr(m, name)
            host = value if isinstance(value, np.ndarray) else _host(value)
            if isinstance(target, np.ndarray) and target.flags.writeable:
                target[...] = host  # in place, cast on the way: no second copy of a large model's weights
                continue
            with backend.use(backend.backend_of(target)):
                new = backend.asarray(np.array(host, copy=True), dtype=dtype_name(target.dtype))
            if is_param:
                m._parameters[name].data = new
            else:
                object.__setattr__(m, name, new)
        return missing, unexpected

    def to(self, dtype: Any = None, backend: str | None = None) -> "Module":
        """Cast (``dtype``) and/or move (``backend``) every parameter and buffer, in place.

        Floating buffers are cast; integer and boolean buffers keep their dtype.
        Gradients and saved contexts are dropped.
        """
        target = backend
        for m in self.modules():
            m._saved.clear()
            for p in m._parameters.values():
                p.data = _convert(p.data, dtype, target)
                p.grad = None
            for bname in m._buffers:
                arr = getattr(m, bname)
                keep = dtype_name(arr.dtype) not in ("float16", "float32", "float64")
                object.__setattr__(m, bname, _convert(arr, None if keep else dtype, target))
        return self

    def extra_repr(self) -> str:
        """Constructor summary shown by repr; subclasses override."""
        return ""

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__}({self.extra_repr()}"]
        for name, child in self._modules.items():
            sub = repr(child).replace("\n", "\n  ")
            lines.append(f"  ({name}): {sub}")
        return lines[0] + ")" if len(lines) == 1 else "\n".join(lines) + "\n)"


def _shape_of(a: Any) -> tuple:
    """The shape of an array, () for a Python number."""
    return tuple(a.shape) if hasattr(a, "shape") else ()


def _child_name(parent: str, child: str, inline: bool) -> str:
    """The dotted name of a child module; an inline child takes its parent's name."""
    if inline:
        return parent
    return f"{parent}.{child}" if parent else child


def _host(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor
        return value.detach().cpu().numpy()
    try:
        return backend.to_numpy(value)
    except TypeError:
        return np.asarray(value)


def _convert(arr: Any, dtype: Any, target: str | None) -> Any:
    src = backend.backend_of(arr)
    name = target or src
    dt = dtype_name(dtype) if dtype is not None else dtype_name(arr.dtype)
    if name == src:
        ns = backend.get_array_module(arr)
        return ns.astype(arr, backend.dtype_of(ns, dt))
    with backend.use(name):
        return backend.asarray(backend.to_numpy(arr), dtype=dt)


class ModuleList(Module):
    """A list of modules registered as children "0", "1", ... (as ``torch.nn.ModuleList``)."""

    def __init__(self, modules: list[Module] | None = None):
        super().__init__()
        for m in modules or []:
            self.append(m)

    def append(self, m: Module) -> "ModuleList":
        """Add a module at the end."""
        setattr(self, str(len(self._modules)), m)
        return self

    def __getitem__(self, i: int) -> Module:
        return list(self._modules.values())[i]

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[Module]:
        return iter(self._modules.values())
