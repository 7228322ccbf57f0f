"""Long runs that survive: atomic checkpoints, resumable RNG state, preemption, non-finite guard, config checks."""

from ett_lightning.resilience.atomic_checkpoint_io import AtomicCheckpointIO
from ett_lightning.resilience.config_checks import check_config
from ett_lightning.resilience.nonfinite_guard import NonFiniteGuard
from ett_lightning.resilience.preemption import PreemptionCheckpoint
from ett_lightning.resilience.rng_state import RNGState

__all__ = ["AtomicCheckpointIO", "NonFiniteGuard", "PreemptionCheckpoint", "RNGState", "check_config"]
