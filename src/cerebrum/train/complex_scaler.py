"""A gradient scaler for mixed precision with complex-valued parameters (seed 004).

`torch.amp.GradScaler.unscale_` hands every gradient to
`torch._amp_foreach_non_finite_check_and_unscale_`, which has no complex kernel
("not implemented for 'ComplexFloat'"), so a model with complex parameters cannot use it.
`ComplexFilteredGradScaler` filters the complex gradients out of that path: it unscales them
itself (multiplying by the inverse scale, viewed as real pairs so the arithmetic is the same
as for real gradients), checks them for inf / NaN, and folds that check into the optimiser's
`found_inf`, the value that decides whether the step is skipped; the real gradients go
through the standard path unchanged.

One more difference from the standard scaler: the skip decision is global. The standard
scaler skips only the optimisers whose own gradients overflowed; with several optimisers
(the engine's Muon + AdamW) one could step while another skips. Here, once any optimiser
unscaled since the last `update()` found an inf / NaN, every `step()` until `update()` is
skipped, so an overflow skips the update of every parameter; `update()` then lowers the scale
by `backoff_factor` as usual. (Call `unscale_` on every optimiser before stepping any, as the
engine does, for the decision to see them all.)

Use it exactly like `torch.amp.GradScaler`:
    scaler = ComplexFilteredGradScaler("cuda")
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer); clip_grad_norm_(...)
    scaler.step(optimizer); scaler.update()
"""

from __future__ import annotations

from typing import Any

import torch
from torch.amp.grad_scaler import OptState


class ComplexFilteredGradScaler(torch.amp.GradScaler):
    """torch.amp.GradScaler that also handles complex gradients (module docstring)."""

    def _unscale_grads_(self, optimizer, inv_scale, found_inf, allow_fp16):
        complex_grads = []
        hidden = []  # (param, grad) taken out of the standard path
        for group in optimizer.param_groups:
            for param in group["params"]:
                if param.grad is not None and param.grad.is_complex():
                    if param.grad.is_sparse:
                        raise TypeError("ComplexFilteredGradScaler does not handle sparse "
                                        "complex gradients")
                    complex_grads.append(param.grad)
                    hidden.append((param, param.grad))
                    param.grad = None
        try:
            per_device = super()._unscale_grads_(optimizer, inv_scale, found_inf, allow_fp16)
        finally:
            for param, grad in hidden:
                param.grad = grad
        with torch.no_grad():
            for grad in complex_grads:
                real = torch.view_as_real(grad)
                device_inv = inv_scale.to(real.device)
                real.mul_(device_inv.to(real.dtype))
                bad = (~torch.isfinite(real)).any().to(torch.float32)
                target = per_device.get(real.device)
                if target is None:
                    target = found_inf.to(real.device).clone()
                    per_device[real.device] = target
                target.add_(bad)
        return per_device

    def step(self, optimizer, *args, **kwargs):
        """Like GradScaler.step, but skipped when any optimiser found an inf / NaN (also for
        optimisers that unscale inside their own step, such as fused AdamW)."""
        if self._enabled and getattr(optimizer, "_step_supports_amp_scaling", False):
            state = self._per_optimizer_states[id(optimizer)]
            if state["stage"] is OptState.UNSCALED and self.found_inf_any():
                state["stage"] = OptState.STEPPED
                return None
        return super().step(optimizer, *args, **kwargs)

    def _maybe_opt_step(self, optimizer, optimizer_state: dict[str, Any], *args, **kwargs):
        if self.found_inf_any():
            return None
        return optimizer.step(*args, **kwargs)

    def found_inf_any(self) -> bool:
        """Whether any optimiser unscaled since the last update() found an inf / NaN."""
        total = 0.0
        for state in self._per_optimizer_states.values():
            for value in state.get("found_inf_per_device", {}).values():
                total += float(value.item())
        return total > 0
