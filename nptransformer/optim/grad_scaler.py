"""``GradScaler``: dynamic loss scaling for float16 training (as ``torch.amp.GradScaler``).

float16 has 5 exponent bits: a gradient below 6e-8 becomes 0 and one below
6e-5 loses precision. The gradient of a mean loss over B*T tokens is often
that small, so the backward is run on ``loss * scale`` and every gradient is
divided by ``scale`` again (in float32) before the update. The scale is as
large as fits: when the scaled gradients overflow to inf/NaN the step is
skipped and the scale halved; after ``growth_interval`` clean steps in a row
it doubles. docs/precision-and-compression.md has the measured effect.
"""

from __future__ import annotations

from typing import Any, Iterable

from .optimizer import check_positive, check_real, grads_are_finite


class GradScaler:
    """The loss scale and its schedule; :meth:`step` skips the update when a gradient is not finite.

    ``init_scale``: the first scale (2**16 as in PyTorch). ``growth_factor``
    (> 1) multiplies it after ``growth_interval`` clean steps;
    ``backoff_factor`` (in (0, 1)) multiplies it on an inf/NaN step.
    ``skipped_steps`` lists the (1-based) step numbers whose update was skipped.

    >>> s = GradScaler(init_scale=8.0, growth_interval=2)
    >>> s.update(found_inf=True); s.scale
    4.0
    >>> s.update(False); s.update(False); s.scale
    8.0
    """

    def __init__(self, init_scale: float = 2.0 ** 16, growth_factor: float = 2.0, backoff_factor: float = 0.5,
                 growth_interval: int = 2000, min_scale: float = 1.0):
        check_positive("init_scale", init_scale)
        check_real("growth_factor", growth_factor, low=1.0, inclusive=False)
        check_positive("backoff_factor", backoff_factor)
        if backoff_factor >= 1:
            raise ValueError(f"backoff_factor must be in (0, 1), got {backoff_factor!r}")
        if isinstance(growth_interval, bool) or not isinstance(growth_interval, int) or growth_interval < 1:
            raise ValueError(f"growth_interval must be an int >= 1, got {growth_interval!r}")
        check_positive("min_scale", min_scale)
        self.scale = float(init_scale)
        self.growth_factor, self.backoff_factor = float(growth_factor), float(backoff_factor)
        self.growth_interval, self.min_scale = growth_interval, float(min_scale)
        self.clean_steps = 0  # consecutive finite steps since the last change of scale
        self.steps = 0  # calls of update
        self.skipped_steps: list[int] = []

    def step(self, optimizer: Any, params: Iterable[Any] | None = None) -> bool:
        """Run ``optimizer.step()`` if every gradient is finite, then :meth:`update`; True when it stepped.

        ``params``: the parameters to check (default: the optimizer's). The
        gradients must already be unscaled (a :class:`~nptransformer.nn.MixedPrecision`
        model divides by the scale in its backward).
        """
        params = [p for g in optimizer.param_groups for p in g["params"]] if params is None else list(params)
        finite = grads_are_finite(params)
        if finite:
            optimizer.step()
        self.update(found_inf=not finite)
        return finite

    def update(self, found_inf: bool) -> None:
        """Back off (and record a skip) when ``found_inf``; grow after ``growth_interval`` clean steps."""
        self.steps += 1
        if found_inf:
            self.skipped_steps.append(self.steps)
            self.scale = max(self.scale * self.backoff_factor, self.min_scale)
            self.clean_steps = 0
            return
        self.clean_steps += 1
        if self.clean_steps >= self.growth_interval:
            self.scale *= self.growth_factor
            self.clean_steps = 0

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume, as JSON-able data (checkpoints store it as an extra)."""
        return {"scale": self.scale, "growth_factor": self.growth_factor, "backoff_factor": self.backoff_factor,
                "growth_interval": self.growth_interval, "min_scale": self.min_scale,
                "clean_steps": self.clean_steps, "steps": self.steps, "skipped_steps": list(self.skipped_steps)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        missing = set(self.state_dict()) - set(state)
        if missing:
            raise ValueError(f"scaler state is missing {sorted(missing)}; got keys {sorted(state)}")
        check_positive("state['scale']", state["scale"])
        self.scale, self.growth_factor = float(state["scale"]), float(state["growth_factor"])
        self.backoff_factor, self.growth_interval = float(state["backoff_factor"]), int(state["growth_interval"])
        self.min_scale, self.clean_steps = float(state["min_scale"]), int(state["clean_steps"])
        self.steps, self.skipped_steps = int(state["steps"]), [int(s) for s in state["skipped_steps"]]

    def __repr__(self) -> str:
        return f"GradScaler(scale={self.scale:g}, skipped={len(self.skipped_steps)} of {self.steps} steps)"
