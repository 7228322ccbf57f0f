"""How far the tokenizer's weights have moved from where the run started."""

from __future__ import annotations

from torch import Tensor, nn

from ett_lightning.user_errors import UserError


def full(tensor: Tensor) -> Tensor:
    """The whole tensor of a (possibly FSDP2-sharded) parameter: ``full_tensor`` of a DTensor is a collective,
    reached by every rank at the same check."""
    tensor = tensor.detach()
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


class WeightDrift:
    """A copy of named parameter groups at the start, and their relative movement since:
    ``||W - W0|| / ||W0||`` over all of a group's parameters together.

    Args:
        groups: name -> module whose parameters form the group (e.g. ``codebook``, ``encoder``).
    """

    def __init__(self, groups: dict[str, nn.Module]) -> None:
        self.modules = groups
        self.reference = {name: [full(p).float().cpu().clone() for p in module.parameters()]
                          for name, module in groups.items()}

    def measure(self) -> dict[str, float]:
        drift = {}
        for name, module in self.modules.items():
            moved = start = 0.0
            for p, p0 in zip(module.parameters(), self.reference[name], strict=True):
                now = full(p).float().cpu()
                moved += float((now - p0).double().pow(2).sum())
                start += float(p0.double().pow(2).sum())
            drift[f"{name}_drift"] = (moved / max(start, 1e-30)) ** 0.5
        return drift

    def state_dict(self) -> dict[str, list[Tensor]]:
        return self.reference

    def load_state_dict(self, state: dict[str, list[Tensor]]) -> None:
        for name, module in self.modules.items():
            shapes = [tuple(full(p).shape) for p in module.parameters()]
            saved = state.get(name) if isinstance(state, dict) else None
            if (not isinstance(saved, list) or not all(isinstance(t, Tensor) and t.is_floating_point() for t in saved)
                    or [tuple(t.shape) for t in saved] != shapes):
                raise UserError(f"the checkpoint's tokenizer-health reference for {name!r} does not match this "
                                "model's parameters (another model's checkpoint, or a damaged one)")
            self.reference[name] = [t.float().cpu() for t in saved]
