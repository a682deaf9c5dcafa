"""Shape rules of the PEFT tuners whose trained blocks must tile a weight, checked before PEFT wraps anything so that
a bad size is one clear line (a ConfigError naming the module, its shape and what fits) instead of PEFT's error."""

from __future__ import annotations

import torch.nn as nn

from ..errors import ConfigError
from ..models.fused import is_conv1d, weight_shape
from ..models.roles import Target


def check_divides(method: str, model: nn.Module, targets: list[Target], size: int, what: str,
                  dims: tuple[str, ...] = ("in",)) -> None:
    """Refuse unless ``size`` divides each target's input (and/or output) width: ``what`` names the argument."""
    for t in targets:
        out_f, in_f = weight_shape(model.get_submodule(t.name))
        widths = {"in": in_f, "out": out_f}
        bad = [d for d in dims if widths[d] % size]
        if bad:
            fits = sorted({k for k in range(1, min(widths[d] for d in dims) + 1)
                           if all(widths[d] % k == 0 for d in dims)})
            raise ConfigError(f"method {method!r}: {what} {size} does not divide the "
                              f"{' and '.join(f'{d}put' for d in dims)} width{'s' if len(dims) > 1 else ''} of {t.name} ({out_f} out, {in_f} in); "
                              f"sizes that fit: {', '.join(map(str, fits[-6:]))}.")


class LinearOnly:
    """Mixin before :class:`~efficientft.methods.peft_backed.PeftMethod` for tuners whose PEFT layers take nn.Linear
    only: a GPT-2 Conv1D target (``attn.c_proj``, ``mlp.c_fc``) is refused in one line instead of PEFT's TypeError."""

    name: str

    def check_targets(self, model: nn.Module, targets: list[Target]) -> None:
        super().check_targets(model, targets)  # type: ignore[misc]
        conv = [t.name for t in targets if is_conv1d(model.get_submodule(t.name))]
        if conv:
            raise ConfigError(f"method {self.name!r}: PEFT's layers for it take nn.Linear only, and {conv[0]} is a "
                              "GPT-2 Conv1D; use lora, vera, fourierft or randlora there.")
