"""What stage 2 cost the tokenizer, per arm: its health at the last check, and across alphas the trade-off between
VQA accuracy and reconstruction (the paper's Table 5, in miniature)."""

from __future__ import annotations

import inspect
import statistics
from pathlib import Path
from typing import Any

import yaml

from ett_lightning.experiments.runs import LightningRun
from ett_lightning.losses import ETTLoss
from ett_lightning.user_errors import UserError

HEALTH = ("probe_index_flips", "probe_psnr_drop", "probe_usage_ratio", "window_usage", "codebook_drift",
          "encoder_drift", "guard_trips")


def health_summary(tunes: list[LightningRun]) -> dict[str, float]:
    """The ``health/...`` values of the stage-2 runs' last check, mean over seeds; {} where the tokenizer did not
    train or no check ran (nothing was measured). ``guard_trips`` is 0 where the guard never tripped."""
    metrics = [run.metrics() if (run.out / "metrics.json").is_file() else {} for run in tunes]
    if not metrics or not all("health/probe_psnr_drop" in m for m in metrics):
        return {}
    return {name: statistics.fmean(m.get(f"health/{name}", 0.0) for m in metrics) for name in HEALTH
            if name == "guard_trips" or all(f"health/{name}" in m for m in metrics)}


def recipe_alpha(recipes: Path) -> float:
    """The loss weight alpha of the stage-2 recipe the ``ett`` arm runs (``ETTLoss``'s default where it sets none)."""
    config = yaml.safe_load((recipes / "ett_sft.yaml").read_text())
    keys = ("model", "init_args", "loss", "init_args", "alpha")
    node: Any = config
    for key in keys:
        node = node.get(key) if isinstance(node, dict) else None
    if node is None:
        return inspect.signature(ETTLoss).parameters["alpha"].default
    try:
        return float(node)
    except (TypeError, ValueError):
        raise UserError(f"{recipes / 'ett_sft.yaml'}: model.init_args.loss.init_args.alpha is {node!r:.40}, not a "
                        "number") from None


def alpha_rows(arms: dict[str, dict[str, list[LightningRun]]], alphas: dict[str, float],
               psnr_before: float) -> list[dict[str, Any]]:
    """One row per ETT arm, by alpha: VQA accuracy (all questions, the character questions), the code probe's
    character accuracy, the PSNR drop of the tuned tokenizer, and its health at the last stage-2 check; means over
    seeds."""
    rows = []
    for arm, alpha in sorted(alphas.items(), key=lambda item: item[1]):
        vqa = [run.metrics() for run in arms[arm]["vqa"]]
        tokenizer = [run.metrics() for run in arms[arm]["tokenizer"]]
        row = {"arm": arm, "alpha": alpha, "vqa_acc": statistics.fmean(m["val/vqa_acc"] for m in vqa),
               "psnr_drop_db": psnr_before - statistics.fmean(m["val/psnr"] for m in tokenizer)}
        if all("val/vqa_acc_word" in m for m in vqa):
            row["vqa_acc_word"] = statistics.fmean(m["val/vqa_acc_word"] for m in vqa)
        if all("val/probe_word" in m for m in tokenizer):
            row["probe_word"] = statistics.fmean(m["val/probe_word"] for m in tokenizer)
        rows.append(row | health_summary(arms[arm]["tune"]))
    return rows
