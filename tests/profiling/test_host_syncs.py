import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from ett_lightning import ETTLoss
from ett_lightning.profiling import HostSyncRecorder
from ett_lightning.resilience import NonFiniteGuard
from ett_lightning.training.step_logging import writes_step_logs
from tests.conftest import make_batch, tiny_module
from tests.losses.test_adversarial import small_adversarial

# Hugging Face reads one value per LLM forward to decide whether the sequences are packed (torch.compile skips it).
HUGGING_FACE_MASK_CHECK = "transformers/masking_utils.py"


def test_the_recorder_sees_item_mask_indexing_nonzero_and_tolist():
    x = torch.arange(6.0)
    with HostSyncRecorder() as recorder:
        x.sum().item()
        _ = x[x > 2]
        x.nonzero()
        x.tolist()
        _ = x * 2 + 1
    assert sorted(sync.op for sync in recorder.syncs) == ["_local_scalar_dense", "index", "nonzero", "tolist"]
    assert all("test_host_syncs.py" in sync.where for sync in recorder.syncs)
    x.tolist()
    assert sum(recorder.syncs.values()) == 4, "tolist is restored when the recorder exits"


class SyncsPerStep(L.Callback):
    """Our own host syncs in each training step, with whether the loggers wrote on that step."""

    def __init__(self, recorder: HostSyncRecorder) -> None:
        self.recorder, self.steps = recorder, []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.recorder.syncs.clear()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        ours = [sync for sync in self.recorder.syncs if HUGGING_FACE_MASK_CHECK not in sync.where]
        self.steps.append((writes_step_logs(pl_module), ours))


def adversarial_module():
    return tiny_module("ett", loss=ETTLoss(perceptual_weight=0.0, adversarial_weight=0.5,
                                           adversarial=small_adversarial(start_step=0)))


@pytest.mark.parametrize("make_module", [lambda: tiny_module("align"), lambda: tiny_module("ett"),
                                         lambda: tiny_module("posttrain"), adversarial_module],
                         ids=["align", "ett", "posttrain", "ett+gan"])
@pytest.mark.parametrize("pack_length", [None, 256], ids=["padded", "packed"])
def test_training_steps_never_wait_for_the_device_except_to_write_logs(make_module, pack_length):
    module = make_module()
    batches = [make_batch(module, batch_size=4, seed=i, pack_length=pack_length) for i in range(4)]
    assert all(batch.packed == bool(pack_length) for batch in batches)
    data = DataLoader(batches, batch_size=None, collate_fn=lambda batch: batch)
    recorder = HostSyncRecorder()
    per_step = SyncsPerStep(recorder)
    trainer = L.Trainer(max_steps=4, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, log_every_n_steps=2,
                        gradient_clip_val=1.0, callbacks=[NonFiniteGuard(), per_step])
    with recorder:
        trainer.fit(module, data)
    quiet = [syncs for logs, syncs in per_step.steps if not logs]
    assert len(quiet) == 2 and quiet == [[], []]
    if pack_length:
        assert not any(HUGGING_FACE_MASK_CHECK in sync.where for sync in recorder.syncs), \
            "a packed step builds no mask, so Hugging Face reads nothing either"
    assert any(syncs for logs, syncs in per_step.steps if logs), "the logging steps read the guard's counters"
