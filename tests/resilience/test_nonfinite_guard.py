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


class SGDModule(PoisonedModule):
    """A plain SGD optimizer: no ``found_inf`` support, so the guard checks on the host every step."""

    def configure_optimizers(self):
        return torch.optim.SGD([p for p in self.parameters() if p.requires_grad], lr=0.1)


def poisoned(steps: set[int], module_class=PoisonedModule) -> PoisonedModule:
    reference = tiny_module("ett")
    module = module_class(reference.tokenizer, reference.projector, reference.language_model, reference.loss,
                          stage="ett", warmup_steps=1)
    module.poisoned_steps = steps
    return module


def fit(module, max_steps, guard, log_every_n_steps=50):
    data = DataLoader([make_batch(module, batch_size=2, seed=i) for i in range(max_steps)], batch_size=None,
                      collate_fn=lambda batch: batch)
    Trainer(max_steps=max_steps, accelerator="cpu", logger=False, enable_progress_bar=False,
            enable_model_summary=False, enable_checkpointing=False, callbacks=[guard],
            log_every_n_steps=log_every_n_steps).fit(module, data)


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


def test_the_fused_optimizer_skips_bad_steps_on_the_device():
    module = poisoned({0})
    fit(module, 1, NonFiniteGuard())
    assert module.trainer.optimizers[0].defaults["fused"]
    assert module.trainer.optimizers[0].found_inf.item() == 1.0


def test_consecutive_bad_steps_stop_the_run_at_the_next_logging_step_naming_the_loss_part():
    guard = NonFiniteGuard(max_consecutive=2)
    with pytest.raises(RuntimeError, match="2 consecutive steps.*loss parts not finite: caption, total"):
        fit(poisoned(set(range(8))), 8, guard, log_every_n_steps=2)
    assert guard.total == 2


def test_bad_steps_are_checked_when_training_ends():
    guard = NonFiniteGuard(max_consecutive=2)
    with pytest.raises(RuntimeError, match="3 consecutive steps"):
        fit(poisoned({0, 1, 2}), 3, guard)


def test_without_found_inf_support_every_step_is_checked_on_the_host():
    module = poisoned({0, 1, 2}, SGDModule)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    guard = NonFiniteGuard(max_consecutive=2)
    with pytest.raises(RuntimeError, match="2 consecutive steps"):
        fit(module, 3, guard)
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())
