"""Tokenizer health and its guard in one process: the statistics equal their formulas, a destructive learning rate
breaks the bounds, the guard rolls back and either stops the run or lowers the rate, a healthy run never trips,
and a resumed run keeps its probes, trips and lowered rate. The 2-process cases (DDP and FSDP2) are in
tests/distributed/test_fsdp2_runs.py, through one_rank_breach.py."""

import copy
import csv
import math

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from ett_lightning.health import TokenizerCollapse, TokenizerGuard, TokenizerHealth
from ett_lightning.health.code_window import CodeWindow, code_statistics
from ett_lightning.user_errors import UserError
from tests.conftest import fit, tiny_module

DESTRUCTIVE = {"tokenizer": 1.0}  # 1000x the tokenizer's rate: the tiny tokenizer loses codes and 3-5 dB in 5 steps


class Record(TokenizerHealth):
    """TokenizerHealth that keeps every check's values."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.history: list[dict[str, float]] = []

    def after_check(self, trainer, pl_module) -> None:
        self.history.append({"step": trainer.global_step, **self.values})


def checks(**kwargs) -> dict:
    return dict(every_n_steps=5, num_probe_images=8, **kwargs)


def test_code_statistics_equal_their_formulas():
    counts = torch.tensor([6, 2, 0, 0, 2], dtype=torch.int64)
    p = torch.tensor([0.6, 0.2, 0.2], dtype=torch.float64)
    entropy = float(-(p * p.log()).sum())
    stats = code_statistics(counts, dead_below=1)
    assert stats["usage"] == pytest.approx(3 / 5) and stats["dead_share"] == pytest.approx(2 / 5)
    assert stats["perplexity"] == pytest.approx(math.exp(entropy))
    assert stats["entropy"] == pytest.approx(entropy / math.log(5))
    assert code_statistics(counts, dead_below=3)["dead_share"] == pytest.approx(4 / 5)
    assert code_statistics(torch.ones(8, dtype=torch.int64))["entropy"] == pytest.approx(1.0)


def test_the_code_window_counts_the_last_blocks_only():
    window = CodeWindow(codebook_size=4, blocks=2)
    window.add(torch.tensor([[0, 0], [1, 1]]))
    assert window.close_block().tolist() == [2, 2, 0, 0]
    window.add(torch.tensor([2]))
    window.add(torch.tensor([2, 3]))
    assert window.close_block().tolist() == [2, 2, 2, 1]  # both blocks
    window.add(torch.tensor([3]))
    assert window.close_block().tolist() == [0, 0, 2, 2]  # the first block has left the window
    assert CodeWindow(4, blocks=1).close_block().tolist() == [0, 0, 0, 0]


def test_a_destructive_rate_breaks_the_bounds_that_a_healthy_rate_keeps():
    healthy, destroyed = Record(**checks()), Record(**checks())
    fit(tiny_module(), steps=10, callbacks=[healthy], log_every_n_steps=5)
    fit(tiny_module(learning_rates=DESTRUCTIVE), steps=10, callbacks=[destroyed], log_every_n_steps=5)
    assert [c["step"] for c in healthy.history] == [5, 10]
    for check in healthy.history:
        assert check["probe_perplexity_ratio"] > 0.5 and check["probe_usage_ratio"] > 0.5, check
        assert check["probe_psnr_drop"] < 3.0 and check["window_dead_share"] < 0.9, check
        assert 0.0 < check["codebook_drift"] < 1.0 and 0.0 < check["encoder_drift"] < 0.2, check
    assert all(c["probe_perplexity_ratio"] < 0.5 or c["probe_psnr_drop"] > 3.0 for c in destroyed.history)
    assert max(c["encoder_drift"] for c in destroyed.history) > 10.0


def test_the_guard_rolls_back_and_stops_naming_the_metric_and_step_and_keeps_the_healthy_state(tmp_path):
    module = tiny_module(learning_rates=DESTRUCTIVE)
    start = {name: p.detach().clone() for name, p in module.tokenizer.named_parameters()}
    guard = TokenizerGuard(**checks(), patience=2, remedy="stop")
    kept = tmp_path / "checkpoints" / "healthy-step0.ckpt"
    with pytest.raises(TokenizerCollapse, match=r"tokenizer guard at step 10: health/probe_\w+ = [-\d.e]+ [<>] "
                                                r"[\d.]+.* for 2 checks; restored the state of step 0; stopped "
                                                rf"\(1 trips\); those weights are in {kept}: start again"):
        fit(module, steps=20, callbacks=[guard], log_every_n_steps=5, default_root_dir=tmp_path)
    saved = torch.load(kept, weights_only=False)["state_dict"]
    for name, p in module.tokenizer.named_parameters():  # the weights of the last healthy check: the start
        assert torch.equal(p, start[name]) and torch.equal(saved[f"tokenizer.{name}"], start[name]), name


def test_the_guard_lowers_the_tokenizer_rate_and_the_run_ends_healthy():
    module = tiny_module(learning_rates=DESTRUCTIVE)
    guard = TokenizerGuard(**checks(), patience=1, remedy="lower_lr", lr_factor=1e-3)
    trainer = fit(module, steps=15, callbacks=[guard], log_every_n_steps=5)
    assert guard.trips == 1 and trainer.callback_metrics["health/guard_trips"] == 1.0
    assert not guard.out_of_bounds(), guard.values
    scheduler = trainer.lr_scheduler_configs[0].scheduler
    base = dict(zip([g["name"] for g in scheduler.optimizer.param_groups], scheduler.base_lrs, strict=True))
    assert base["tokenizer"] == base["tokenizer/no_decay"] == pytest.approx(1e-3)  # 1.0 x lr_factor
    assert base["language_model"] == module.learning_rates["language_model"]  # only the tokenizer's was lowered


def test_raise_alpha_weights_the_tokenizers_own_objective_more(tmp_path):
    module = tiny_module(learning_rates=DESTRUCTIVE)
    alpha = module.loss.alpha
    guard = TokenizerGuard(**checks(), patience=1, remedy="raise_alpha", alpha_factor=4.0, max_trips=1)
    try:
        fit(module, steps=15, callbacks=[guard], log_every_n_steps=5, default_root_dir=tmp_path)
    except TokenizerCollapse as stopped:  # the rate is still destructive: a second trip stops the run
        assert "stopped (2 trips)" in str(stopped)
    assert module.loss.alpha == pytest.approx(4.0 * alpha) and guard.state_dict()["alpha"] == module.loss.alpha


class RecordRestart(TokenizerGuard):
    """The guard, keeping the codebook and the window's counts just before and after its first check."""

    def after_check(self, trainer, pl_module) -> None:
        weight = pl_module.tokenizer.quantize.embedding.weight
        if not hasattr(self, "before"):
            self.before, self.seen = weight.detach().clone(), self.counts.clone()
            self.inputs = pl_module.tokenizer.quantize.flatten_latents(self.latents)
        super().after_check(trainer, pl_module)
        if not hasattr(self, "after"):
            self.after = weight.detach().clone()


def test_dead_codes_restart_from_recent_encoder_outputs():
    guard = RecordRestart(**checks(), restart_dead_codes=True)
    trainer = fit(tiny_module(), steps=5, callbacks=[guard], log_every_n_steps=5)
    dead = guard.seen < 1
    assert 0 < int(dead.sum()) < len(dead)  # the tiny tokenizer leaves some of its 32 codes unused
    assert torch.equal(guard.after[~dead], guard.before[~dead])
    for row in guard.after[dead]:
        assert (guard.inputs == row).all(dim=1).any()  # a latent of the last training step
    assert len(guard.after[dead].unique(dim=0)) == min(int(dead.sum()), len(guard.inputs.unique(dim=0)))
    assert trainer.callback_metrics["health/restarted_codes"] == float(dead.sum())


def test_a_resumed_run_keeps_its_probes_trips_and_lowered_rate(tmp_path):
    guard = TokenizerGuard(**checks(), patience=1, lr_factor=1e-3)
    saved = ModelCheckpoint(dirpath=tmp_path, save_last=True, every_n_train_steps=5)
    fit(tiny_module(learning_rates=DESTRUCTIVE), steps=10, callbacks=[guard, saved], log_every_n_steps=5,
        enable_checkpointing=True)
    assert guard.trips == 1
    resumed = TokenizerGuard(**checks(), patience=1, lr_factor=1e-3)
    trainer = fit(tiny_module(learning_rates=DESTRUCTIVE), steps=15, callbacks=[resumed], log_every_n_steps=5,
                  ckpt_path=str(tmp_path / "last.ckpt"))
    assert trainer.global_step == 15 and resumed.trips == 1 and not resumed.out_of_bounds(), resumed.values
    assert torch.equal(resumed.probes.images, guard.probes.images)
    assert torch.equal(resumed.probes.start["indices"], guard.probes.start["indices"])
    scheduler = trainer.lr_scheduler_configs[0].scheduler
    assert scheduler.base_lrs[[g["name"] for g in scheduler.optimizer.param_groups].index("tokenizer")] == 1e-3


def test_with_gradient_accumulation_each_check_step_is_measured_once():
    health = Record(**checks())
    fit(tiny_module(), steps=10, callbacks=[health], log_every_n_steps=5, accumulate_grad_batches=2)
    assert [c["step"] for c in health.history] == [5, 10]  # 20 batches; none checked at step 0 or twice


def test_a_frozen_tokenizer_is_not_measured():
    health = Record(**checks())
    trainer = fit(tiny_module(stage="align"), steps=5, callbacks=[health], log_every_n_steps=5)
    assert health.history == [] and not any(k.startswith("health/") for k in trainer.callback_metrics)


def test_each_check_is_logged_at_its_step_whatever_the_logging_interval(tmp_path):
    fit(tiny_module(), steps=10, callbacks=[TokenizerHealth(every_n_steps=5, num_probe_images=4)],
        logger=CSVLogger(tmp_path, name="", version=""), log_every_n_steps=3)
    rows = [row for row in csv.DictReader((tmp_path / "metrics.csv").open()) if row.get("health/probe_psnr")]
    assert [row["step"] for row in rows] == ["5", "10"]
    assert all(row[f"health/{name}"] for row in rows for name in ("window_usage", "window_entropy",
               "window_dead_share", "codebook_drift", "encoder_drift", "probe_index_flips", "probe_ssim_drop"))


def tampered(state: dict, case: str) -> None:
    """One way a hostile or damaged checkpoint can hold the guard's state."""
    probes, start = state["probes"], state["probes"]["start"]
    if case == "float images":
        probes["images"] = probes["images"].float()
    elif case == "more images than the recipe's probes":
        probes["images"] = probes["images"][:1].expand(200_000, -1, -1, -1)
    elif case == "images of another size":
        probes["images"] = probes["images"][:, :, :8, :8]
    elif case == "codes of another shape":
        start["indices"] = start["indices"][:, :5]
    elif case == "a NaN start":
        start["psnr"] = float("nan")
    elif case == "a negative start usage":
        start["usage"] = -1.0
    elif case == "trips as text":
        state["trips"] = "abc"
    elif case == "a negative alpha":
        state["alpha"] = -5.0
    elif case == "a drift reference of another model":
        state["drift"]["encoder"] = state["drift"]["encoder"][:1]


def test_a_tampered_guard_state_in_a_checkpoint_is_refused_with_one_line(tmp_path):
    saved = ModelCheckpoint(dirpath=tmp_path, save_last=True, every_n_train_steps=5)
    fit(tiny_module(), steps=5, callbacks=[TokenizerGuard(**checks()), saved], log_every_n_steps=5,
        enable_checkpointing=True)
    checkpoint = torch.load(tmp_path / "last.ckpt", weights_only=False)
    key = next(name for name in checkpoint["callbacks"] if name.startswith("TokenizerGuard"))
    cases = ["float images", "more images than the recipe's probes", "images of another size",
             "codes of another shape", "a NaN start", "a negative start usage", "trips as text", "a negative alpha",
             "a drift reference of another model"]
    for case in cases:
        state = copy.deepcopy(checkpoint)
        tampered(state["callbacks"][key], case)
        torch.save(state, tmp_path / "tampered.ckpt")
        with pytest.raises(UserError, match="the checkpoint's tokenizer-(health|guard) (probes|state|reference)"):
            fit(tiny_module(), steps=10, callbacks=[TokenizerGuard(**checks())], log_every_n_steps=5,
                ckpt_path=str(tmp_path / "tampered.ckpt"))
