import pytest
import torch
from lightning.pytorch import Trainer
from torch.utils.data import DataLoader

from ett_lightning import ETTModule
from ett_lightning.resilience import NonFiniteGuard
from tests.conftest import make_batch, tiny_module


class PoisonedModule(ETTModule):
    """Makes the caption loss NaN on the given steps."""

    poisoned_steps: set[int] = set()

    def caption_loss(self, *args, **kwargs):
        loss = super().caption_loss(*args, **kwargs)
        return loss * float("nan") if self.global_step in self.poisoned_steps else loss


def poisoned(steps: set[int]) -> PoisonedModule:
    reference = tiny_module("ett")
    module = PoisonedModule(reference.tokenizer, reference.projector, reference.language_model, reference.loss,
                            stage="ett", warmup_steps=1)
    module.poisoned_steps = steps
    return module


def fit(module, max_steps, guard):
    data = DataLoader([make_batch(module, batch_size=2, seed=i) for i in range(max_steps)], batch_size=None,
                      collate_fn=lambda batch: batch)
    Trainer(max_steps=max_steps, accelerator="cpu", logger=False, enable_progress_bar=False,
            enable_model_summary=False, enable_checkpointing=False, callbacks=[guard]).fit(module, data)


def test_a_nan_step_is_skipped_counted_and_training_goes_on():
    module = poisoned({1})
    guard = NonFiniteGuard(max_consecutive=3)
    fit(module, 3, guard)
    assert guard.total == 1 and guard.consecutive == 0
    assert all(torch.isfinite(p).all() for p in module.parameters())


def test_nan_step_leaves_weights_and_optimizer_state_untouched():
    module = poisoned({0})
    before = {k: v.clone() for k, v in module.state_dict().items()}
    guard = NonFiniteGuard(max_consecutive=5)
    fit(module, 1, guard)
    assert guard.total == 1
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())


def test_consecutive_bad_steps_stop_the_run_naming_the_loss_part():
    guard = NonFiniteGuard(max_consecutive=2)
    with pytest.raises(RuntimeError, match="2 consecutive steps.*loss parts not finite: caption, total"):
        fit(poisoned({0, 1, 2}), 3, guard)
