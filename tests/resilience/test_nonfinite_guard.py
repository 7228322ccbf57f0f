import pytest
import torch
from lightning.pytorch import Trainer
from torch.utils.data import DataLoader

from ett_lightning import ETTModule
from ett_lightning.resilience import NonFiniteGuard
from tests.conftest import make_batch, tiny_module
from tests.distributed.float16 import CPUFloat16


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


def fit(module, max_steps, guard, log_every_n_steps=50, plugins=None):
    data = DataLoader([make_batch(module, batch_size=2, seed=i) for i in range(max_steps)], batch_size=None,
                      collate_fn=lambda batch: batch)
    Trainer(max_steps=max_steps, accelerator="cpu", logger=False, enable_progress_bar=False,
            enable_model_summary=False, enable_checkpointing=False, callbacks=[guard],
            log_every_n_steps=log_every_n_steps, plugins=plugins).fit(module, data)


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


def fit_fp16(module, max_steps, guard, init_scale, log_every_n_steps=50):
    """A real float16 run with loss scaling on CPU; returns its GradScaler."""
    precision = CPUFloat16(init_scale)
    fit(module, max_steps, guard, log_every_n_steps, plugins=[precision])
    return precision.scaler


def test_float16_loss_scale_calibration_is_counted_apart_and_does_not_stop_the_run():
    """At 2**28 the scaled gradients overflow float16 until the GradScaler has halved its scale about ten times:
    each such step (finite loss) is skipped by the scaler. Counted as bad steps they stopped the run at 3."""
    module = poisoned(set())
    before = {k: v.clone() for k, v in module.state_dict().items()}
    guard = NonFiniteGuard(max_consecutive=3)
    scaler = fit_fp16(module, 14, guard, init_scale=2.0**28, log_every_n_steps=1)
    assert guard.total == 0 and 3 < guard.overflows < 14
    assert scaler.get_scale() == 2.0 ** (28 - guard.overflows)  # one halving per counted overflow, no growth yet
    assert module.trainer.callback_metrics["train/overflow_steps"] == guard.overflows
    assert all(torch.isfinite(p).all() for p in module.parameters())
    assert any(not torch.equal(before[k], v) for k, v in module.state_dict().items())


def test_a_nan_loss_under_the_loss_scaler_is_still_a_bad_step():
    guard = NonFiniteGuard(max_consecutive=2)
    with pytest.raises(RuntimeError, match="2 consecutive steps.*loss parts not finite: caption, total"):
        fit_fp16(poisoned(set(range(6))), 6, guard, init_scale=2.0**8, log_every_n_steps=2)
    assert guard.overflows == 0


def test_overflows_that_no_loss_scale_fixes_stop_the_run_naming_the_scale():
    guard = NonFiniteGuard(max_consecutive_overflows=4)
    with pytest.raises(RuntimeError, match="4 consecutive steps whose float16 gradients overflowed.*bf16-mixed"):
        fit_fp16(poisoned(set()), 8, guard, init_scale=2.0**60, log_every_n_steps=4)


def test_guard_state_round_trips_and_reads_checkpoints_without_overflow_counters():
    guard = NonFiniteGuard()
    guard.counts = torch.tensor([3, 1, 7, 2])
    restored = NonFiniteGuard()
    restored.load_state_dict(guard.state_dict())
    assert restored.state_dict() == {"total": 3, "consecutive": 1, "overflows": 7, "overflows_in_a_row": 2}
    restored.load_state_dict({"total": 5, "consecutive": 0})
    assert (restored.total, restored.consecutive, restored.overflows) == (5, 0, 0)
