"""``ett demo``: the paper's claim in miniature, on CPU, as a chain of ordinary ``lightning`` runs.

1. tokenizer pre-training on reconstruction alone (the packaged recipe ``demo/tokenizer``, ``ett recipes``);
2. stage 1, projector alignment (``ett_align.yaml``), from the tokenizer;
3. per seed, two arms from that same stage-1 checkpoint, same data and steps:
   ``frozen`` (stage 2 with the tokenizer frozen) and ``ett`` (stage 2 end to end), each followed by
   stage 3 post-training on VQA with the tokenizer frozen (``ett_sft.yaml``, ``ett_posttrain.yaml``);
4. evaluation: VQA accuracy of both arms on every held-out VQA sample, and the tokenizer's reconstruction
   (PSNR, codebook usage; rFID with ``--fid-weights``) before and after ETT, with how far stage 2 moved it
   (``health/...``, docs/tokenizer_health.md);
5. with ``--alphas``, more ETT arms at those loss weights alpha, each with its stage 3 and evaluations: the
   paper's trade-off between VQA and the tokenizer's reconstruction (Table 5), in miniature.

``--quantizer lfq|fsq|ibq`` asks the same question of another tokenizer family: step 1 runs ``tokenizer_<name>``
and every later stage gets that recipe's quantizer (and a projector reading its code vectors).

Writes ``<out>/results.json``, ``results.md`` and ``results.png``. Each run's config, log and checkpoints are
in its own directory under ``<out>``; the ``$ lightning ...`` lines printed are the commands to rerun one.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import os
import platform
import shlex
import shutil
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from ett_lightning.convert.synthetic import GLYPHS, make_shards
from ett_lightning.experiments import runs
from ett_lightning.experiments.interval import paired_interval, question_scores, reference_answers, score_matrix
from ett_lightning.experiments.report import write_figure, write_markdown
from ett_lightning.experiments.runs import LightningRun, RunsStopped, stop_runs_on_signals
from ett_lightning.experiments.tradeoff import alpha_rows, health_summary, recipe_alpha
from ett_lightning.packaged_recipes import RECIPES
from ett_lightning.user_errors import UserError, non_negative_float, whole_number

ARMS = ("frozen", "ett")
RECIPE_NAMES = ("tokenizer", "ett_align", "ett_sft", "ett_posttrain")  # what --recipes must hold
QUANTIZER_RECIPES = {"vq": "tokenizer", "ibq": "tokenizer_ibq", "lfq": "tokenizer_lfq", "fsq": "tokenizer_fsq"}
QUANTIZER_KEY = "model.init_args.tokenizer.init_args.quantizer"
PROJECTOR_IN_KEY = "model.init_args.projector.init_args.in_dim"
RECONSTRUCTION_CALLBACK = "ett_lightning.callbacks.ReconstructionMetrics"


@dataclass
class DemoPlan:
    """Where things are and how long each stage trains; ``seeds`` are the arms' seeds (stages 2 and 3). ``glyph``
    is how the synthetic shards draw the character when ``data`` has none yet (centred: a small reader can tell
    the character apart, docs/results.md). ``parallel_arms`` trains two arms at once, each run with half the
    cores as torch threads (on 2 cores about 1.25 times the throughput of 2-thread runs in turn, and one run's
    OpenMP threads never wait on the other's: docs/performance.md); a chain left alone gets every core.
    ``alphas``: loss weights of extra ETT arms. ``quantizer``: the tokenizer family (a key of
    :data:`QUANTIZER_RECIPES`)."""

    out: Path = Path("outputs/demo")
    data: Path = Path("data/synthetic")
    recipes: Path = RECIPES / "demo"
    seeds: list[int] = field(default_factory=lambda: [0])
    tokenizer_steps: int = 600
    align_steps: int = 300
    tune_steps: int = 3000
    posttrain_steps: int = 2000
    glyph: str = "centred"
    fid_weights: str | None = None
    parallel_arms: bool = True
    alphas: list[float] = field(default_factory=list)
    quantizer: str = "vq"

    def run(self, recipe: str, out: str, command: str = "fit", **overrides: Any) -> LightningRun:
        kind = "caption" if recipe != "ett_posttrain" else "vqa"
        data = {"data.init_args.train_shards": str(self.data / kind / "train-*.tar"),
                "data.init_args.val_shards": str(self.data / kind / "val-*.tar")}
        if recipe == "tokenizer":
            recipe = QUANTIZER_RECIPES[self.quantizer]
        else:
            data |= self.family_overrides
        return LightningRun(str(self.recipes / f"{recipe}.yaml"), self.out / out, command, {**data, **overrides})

    @functools.cached_property
    def family_overrides(self) -> dict[str, Any]:
        """What the later stages' recipes change for ``quantizer`` (none for the recipes' own VQ), read once."""
        if self.quantizer == "vq":
            return {}
        return quantizer_overrides(self.recipes / f"{QUANTIZER_RECIPES[self.quantizer]}.yaml")

    def fit(self, recipe: str, out: str, steps: int, seed: int, init_from: Path | None, **overrides: Any):
        return self.run(recipe, out, "fit", **{"trainer.max_steps": steps, "seed_everything": seed,
                                               "data.init_args.seed": seed,
                                               "model.init_args.init_from": str(init_from) if init_from else None,
                                               **overrides})

    def evaluate(self, recipe: str, out: str, checkpoint: Path) -> LightningRun:
        """``lightning validate`` of ``checkpoint``'s weights on the whole validation split."""
        overrides = {"model.init_args.init_from": str(checkpoint), "trainer.limit_val_batches": 1.0}
        run = self.run(recipe, out, "validate", **overrides)
        if recipe == "tokenizer" and self.fid_weights:
            run.callback_args[RECONSTRUCTION_CALLBACK] = {"fid": True, "fid_weights": self.fid_weights}
        return run


def quantizer_overrides(tokenizer_recipe: Path) -> dict[str, Any]:
    """The quantizer of a tokenizer recipe and the projector input width its code vectors need, as overrides of the
    later stages' recipes; a recipe whose quantizer cannot be built is one :class:`UserError`."""
    node: Any = yaml.safe_load(tokenizer_recipe.read_text())
    try:
        for key in QUANTIZER_KEY.split("."):
            node = node[key]
        module, _, name = node["class_path"].rpartition(".")  # a bare name is one of the package's exports
        quantizer = getattr(importlib.import_module(module or "ett_lightning"), name)(**node.get("init_args") or {})
    except (AttributeError, ImportError, KeyError, TypeError, ValueError) as err:
        raise UserError(f"{tokenizer_recipe}: no quantizer the demo can build at {QUANTIZER_KEY} "
                        f"({type(err).__name__}: {str(err)[:160]})") from None
    return {QUANTIZER_KEY: node, PROJECTOR_IN_KEY: quantizer.code_dim}


def run_demo(plan: DemoPlan, reuse: bool = False) -> dict[str, Any]:
    """Runs every stage of the plan and returns (and writes) the results."""
    start = time.monotonic()
    runs = [plan.out / name for name in ("tokenizer", "align", "tokenizer_eval")] + sorted(plan.out.glob("seed*/*/*"))
    earlier = [run for run in runs if (run / "config.yaml").is_file()]
    if earlier and not reuse:
        raise UserError(f"{plan.out} holds earlier runs ({earlier[0]}, ...): add --reuse to keep the finished ones "
                        "and go on from where the others stopped, or give another --out")
    if not (plan.data / "vqa").is_dir():
        write_shards(plan.data, plan.glyph)
    shards_seconds = time.monotonic() - start
    tokenizer = plan.fit("tokenizer", "tokenizer", plan.tokenizer_steps, plan.seeds[0], None).run(reuse)
    align = plan.fit("ett_align", "align", plan.align_steps, plan.seeds[0], tokenizer.last_checkpoint).run(reuse)
    before = plan.evaluate("tokenizer", "tokenizer_eval", tokenizer.last_checkpoint).run(reuse)
    arms: dict[str, dict[str, list[LightningRun]]] = {arm: {"tune": [], "posttrain": [], "vqa": [], "tokenizer": []}
                                                      for arm in arm_names(plan)}
    cores = CoreShare(len(plan.seeds) * len(arm_names(plan)), runs_at_once(plan)) if plan.parallel_arms else None
    with ThreadPoolExecutor(runs_at_once(plan)) as pool:
        chains = [(arm, pool.submit(run_arm, plan, seed, arm, align.last_checkpoint, reuse, cores))
                  for seed in plan.seeds for arm in arm_names(plan)]
        try:
            for arm, chain in chains:
                for name, run in chain.result().items():
                    arms[arm][name].append(run)
        except BaseException:
            pool.shutdown(cancel_futures=True)  # a failed run stops the demo once the running chains end
            raise
    after = arms["ett"]["tokenizer"]
    results = summarize(plan, before, after, arms, time.monotonic() - start)
    stages = stage_runs([tokenizer, align, before], arms)
    results["seconds_per_run"] = run_seconds(shards_seconds, stages)
    results["threads_per_run"] = run_threads(stages)
    (plan.out / "results.json").write_text(json.dumps(results, indent=2))
    write_markdown(results, plan.out / "results.md")
    write_figure({arm: arms[arm] for arm in ARMS}, before, after, plan.seeds, plan.out / "results.png", arms)
    return results


def write_shards(data: Path, glyph: str) -> None:
    """The demo's shards, written beside ``data`` and moved in once whole, the ``vqa`` ones last (their folder is
    what says the shards are there): a demo stopped while writing them leaves no half set for the next to train on."""
    (data / "caption").mkdir(parents=True, exist_ok=True)  # a --data that cannot hold them fails before the writing
    partial = data.with_name(f"{data.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    make_shards(partial, num_train=5000, num_val=500, image_size=64, glyph=glyph)
    for shard in sorted((partial / "caption").iterdir()):
        os.replace(shard, data / "caption" / shard.name)
    os.replace(partial / "vqa", data / "vqa")  # at once: there is none yet
    shutil.rmtree(partial)


def stage_runs(shared: list[LightningRun], arms: dict[str, dict[str, list[LightningRun]]]
               ) -> dict[str, list[LightningRun]]:
    """Each stage's runs (an arm's: one per seed) under the name the time table gives the stage."""
    names = {"vqa": "vqa_eval", "tokenizer": "tokenizer_eval"}
    stages = {run.out.name: [run] for run in shared}
    for arm, chain in arms.items():
        stages |= {f"{arm} {names.get(name, name)}": runs for name, runs in chain.items() if runs}
    return stages


def run_seconds(shards: float, stages: dict[str, list[LightningRun]]) -> dict[str, float | None]:
    """Wall seconds of each stage's command, process start-up included (mean over seeds for the arms' runs, which
    train side by side; None for a run kept with ``--reuse``): where the demo's time goes."""
    def mean(runs: list[LightningRun]) -> float | None:
        seconds = [run.seconds for run in runs if run.seconds is not None]
        return round(statistics.fmean(seconds), 1) if seconds else None

    return {"shards (made or found)": round(shards, 1), **{stage: mean(runs) for stage, runs in stages.items()}}


def run_threads(stages: dict[str, list[LightningRun]]) -> dict[str, list[int | None]]:
    """Torch threads of each stage's runs that ran here, per seed (None: torch's default, every core): a run at
    another thread count gives other, equally valid figures (another summation order), and a chain left alone
    runs on every core. Runs kept with ``--reuse`` are left out, as in :func:`run_seconds`."""
    return {stage: [run.threads for run in runs if run.seconds is not None] for stage, runs in stages.items()}


def arm_names(plan: DemoPlan) -> list[str]:
    """``frozen``, ``ett`` (the recipe's alpha) and one ``ett_alpha<a>`` arm per extra alpha."""
    return [*ARMS, *(f"ett_alpha{alpha!r}" for alpha in plan.alphas)]  # repr: the exact float, one arm each


def arm_alpha(arm: str) -> float | None:
    """The loss weight alpha an arm overrides (None: the recipe's)."""
    return float(arm.removeprefix("ett_alpha")) if arm.startswith("ett_alpha") else None


def runs_at_once(plan: DemoPlan) -> int:
    """How many arm chains train side by side: two, or one when ``parallel_arms`` is off."""
    return len(ARMS) if plan.parallel_arms else 1


def arm_threads(plan: DemoPlan) -> int | None:
    """Torch threads of each run while the arms train side by side (half the cores each), else None (torch's
    default)."""
    return threads_each(runs_at_once(plan)) if plan.parallel_arms else None


def threads_each(runs: int) -> int:
    """Torch threads of each of ``runs`` runs that share the machine's cores."""
    return max(1, (os.cpu_count() or 1) // max(1, runs))


class CoreShare:
    """The cores split among the arm chains that train side by side: each run gets its share when it starts, so
    the chain left running alone at the end (with one seed the ETT arm's, whose steps cost about twice the frozen
    arm's) takes every core instead of leaving one idle.

    Args:
        chains: how many chains the demo runs in all.
        at_once: how many of them train side by side.
    """

    def __init__(self, chains: int, at_once: int):
        self.left, self.at_once, self.lock = chains, at_once, threading.Lock()

    def threads(self) -> int:
        """Torch threads for a run starting now."""
        with self.lock:
            return threads_each(min(self.at_once, self.left))

    def chain_done(self) -> None:
        with self.lock:
            self.left -= 1


def run_arm(plan: DemoPlan, seed: int, arm: str, align: Path, reuse: bool, cores: CoreShare | None
            ) -> dict[str, LightningRun]:
    """One arm of one seed: stage 2 (the tokenizer trains in every arm but ``frozen``; an ``ett_alpha<a>`` arm
    with the loss weight alpha = a), stage 3, its VQA evaluation and, where the tokenizer trained, the evaluation of
    the tuned tokenizer. ``cores`` gives each run its torch threads (None: torch's default, every core)."""
    root = f"seed{seed}/{arm}"
    alpha = arm_alpha(arm)
    tune = plan.fit("ett_sft", f"{root}/tune", plan.tune_steps, seed, align,
                    **{"model.init_args.trainable": {"tokenizer": arm != "frozen"}},
                    **({"model.init_args.loss.init_args.alpha": alpha} if alpha is not None else {}))
    chain = {"tune": tune}
    chain["posttrain"] = plan.fit("ett_posttrain", f"{root}/posttrain", plan.posttrain_steps, seed,
                                  tune.last_checkpoint)
    chain["vqa"] = plan.evaluate("ett_posttrain", f"{root}/vqa_eval", chain["posttrain"].last_checkpoint)
    if arm != "frozen":
        chain["tokenizer"] = plan.evaluate("tokenizer", f"{root}/tokenizer_eval", tune.last_checkpoint)
    try:
        for run in chain.values():
            run.threads = cores.threads() if cores else None
            run.run(reuse)
    finally:
        if cores:
            cores.chain_done()
    return chain


def summarize(plan: DemoPlan, before: LightningRun, after: list[LightningRun],
              arms: dict[str, dict[str, list[LightningRun]]], seconds: float) -> dict[str, Any]:
    """results.json: per-arm VQA accuracy (mean and per seed; per answer type and with grey images where the
    evaluation logged them), tokenizer quality before/after, the setup."""
    results: dict[str, Any] = {}
    for arm in ARMS:
        metrics = [run.metrics() for run in arms[arm]["vqa"]]
        names = sorted(set.intersection(*(set(m) for m in metrics)))
        results[arm] = {name.removeprefix("val/"): statistics.fmean(m[name] for m in metrics)
                        for name in names if name.startswith("val/vqa_acc")}
        results[arm]["vqa_acc_per_seed"] = [m["val/vqa_acc"] for m in metrics]
    results["ett_minus_frozen_points"] = 100 * (results["ett"]["vqa_acc"] - results["frozen"]["vqa_acc"])
    results["ett_minus_frozen_interval_95"] = gain_interval(plan, arms)
    tuned = [run.metrics() for run in after]
    reference = before.metrics()
    results["tokenizer"] = {
        "psnr_before": reference["val/psnr"],
        "psnr_after": statistics.fmean(m["val/psnr"] for m in tuned),
        "psnr_after_per_seed": [m["val/psnr"] for m in tuned],
        "codebook_usage_before": reference["val/epoch_codebook_usage"],
        "codebook_usage_after": statistics.fmean(m["val/epoch_codebook_usage"] for m in tuned),
        "rfid_before": reference.get("val/rfid", "unavailable: pass --fid-weights (Inception weights file)"),
        "rfid_after": statistics.fmean(m["val/rfid"] for m in tuned) if "val/rfid" in reference else None,
    }
    results["psnr_drop_db"] = results["tokenizer"]["psnr_before"] - results["tokenizer"]["psnr_after"]
    if "val/probe_word" in reference:
        results["probe"] = probe_summary(reference, tuned)
    results["health"] = {arm: health_summary(arms[arm]["tune"]) for arm in ARMS}
    if plan.alphas:
        alphas = {arm: arm_alpha(arm) for arm in arms if arm_alpha(arm) is not None}
        alphas["ett"] = recipe_alpha(plan.recipes)
        results["alphas"] = alpha_rows(arms, alphas, reference["val/psnr"])
    results["seeds"] = plan.seeds
    results["quantizer"] = plan.quantizer
    results["plan"] = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(plan).items()}
    results["wall_seconds"] = round(seconds, 1)
    results["machine"] = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                          "torch_threads": arm_threads(plan) or torch.get_num_threads(),
                          "runs_at_once": runs_at_once(plan), "torch": torch.__version__}
    return results


def gain_interval(plan: DemoPlan, arms: dict[str, dict[str, list[LightningRun]]]) -> list[float]:
    """95 % interval of ETT - frozen in points, paired bootstrap over seeds and the questions every run answered."""
    references = reference_answers(str(plan.data / "vqa" / "val-*.tar"))
    per_seed = {arm: [question_scores(run.out / "vqa_results.json", references) for run in arms[arm]["vqa"]]
                for arm in ARMS}
    questions = sorted(set.intersection(*(set(scores) for runs in per_seed.values() for scores in runs)))
    low, high = paired_interval(*(score_matrix(per_seed[arm], questions) for arm in ARMS))
    return [100 * low, 100 * high]


def probe_summary(before: dict[str, float], after: list[dict[str, float]]) -> dict[str, Any]:
    """CodeProbe's character accuracy from the tokenizer's codes: the frozen arm's tokenizer is the pre-trained
    one, the ETT arm's is each seed's tuned tokenizer (mean and per seed); the same for the colour."""
    summary: dict[str, Any] = {"frozen": before["val/probe_word"],
                               "ett": statistics.fmean(m["val/probe_word"] for m in after),
                               "ett_per_seed": [m["val/probe_word"] for m in after]}
    if "val/probe_colour" in before:
        summary["colour"] = {"frozen": before["val/probe_colour"],
                             "ett": statistics.fmean(m["val/probe_colour"] for m in after),
                             "ett_per_seed": [m["val/probe_colour"] for m in after]}
    return summary


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    defaults = DemoPlan()
    parser = argparse.ArgumentParser(prog="ett demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help=f"default: {defaults.out}, {defaults.out}-<quantizer> for another one")
    parser.add_argument("--data", type=Path, default=defaults.data, help="synthetic shards (made if missing)")
    parser.add_argument("--recipes", type=Path, default=defaults.recipes)
    seeds = parser.add_mutually_exclusive_group()
    seeds.add_argument("--seeds", type=whole_number(0, 2**32 - 1), nargs="+", default=defaults.seeds,
                       help="the arms' seeds")
    seeds.add_argument("--num-seeds", type=whole_number(1), help="seeds 0 .. N-1 (`make demo SEEDS=3`)")
    for name in ("tokenizer_steps", "align_steps", "tune_steps", "posttrain_steps"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=whole_number(1), default=getattr(defaults, name))
    parser.add_argument("--glyph", choices=GLYPHS, default=defaults.glyph, help="when the shards are made here")
    parser.add_argument("--fid-weights", help="Inception weights file: adds rFID before/after")
    parser.add_argument("--reuse", action="store_true",
                        help="keep finished runs, resume stopped ones from their last.ckpt (a killed demo goes on)")
    parser.add_argument("--alphas", type=non_negative_float, nargs="+", default=[],
                        help="more ETT arms with these loss weights alpha, e.g. 0 1 (the ett arm keeps the recipe's)")
    parser.add_argument("--quantizer", choices=QUANTIZER_RECIPES, default=defaults.quantizer,
                        help="tokenizer family: vq, ibq, lfq (Open-MAGVIT2's) or fsq (recipe tokenizer_<name>)")
    parser.add_argument("--one-arm-at-a-time", dest="parallel_arms", action="store_false",
                        help="train the arms one after the other, each run with every core (default: both at once)")
    args = vars(parser.parse_args(argv))
    needed = (*RECIPE_NAMES, QUANTIZER_RECIPES[args["quantizer"]])
    missing = [f"{name}.yaml" for name in needed if not (args["recipes"] / f"{name}.yaml").is_file()]
    if missing:
        parser.error(f"--recipes {args['recipes']} lacks {', '.join(missing)} (default: the packaged demo recipes)")
    ett_alpha = recipe_alpha(args["recipes"])
    args["alphas"] = [a for a in dict.fromkeys(args["alphas"]) if a != ett_alpha]  # the ett arm runs the recipe's
    if args["out"] is None:
        args["out"] = Path(f"{defaults.out}{'' if args['quantizer'] == 'vq' else '-' + args['quantizer']}")
    reuse = args.pop("reuse")
    num_seeds = args.pop("num_seeds")
    if num_seeds is not None:
        args["seeds"] = list(range(num_seeds))
    plan = DemoPlan(**args)
    try:
        plan.family_overrides  # noqa: B018 (read before the first stage: a recipe mistake costs no training)
    except UserError as problem:
        parser.error(str(problem))
    try:
        with stop_runs_on_signals():
            results = run_demo(plan, reuse)
    except RunsStopped:
        stopped_by = runs.STOPPED_BY[0]
        print(f"ett demo: stopped by {stopped_by.name} (a run it stopped saved its last.ckpt first). To go on: "
              f"ett demo {shlex.join(argv)}{'' if reuse else ' --reuse'}", file=sys.stderr, flush=True)
        raise SystemExit(128 + stopped_by) from None
    print((Path(args["out"]) / "results.md").read_text())
    print(f"results: {args['out']}/results.json, results.md, results.png ({results['wall_seconds']:.0f} s)")
