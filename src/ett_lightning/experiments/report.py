"""The demo's results as a markdown table and one figure (loss curves of both arms, reconstructions)."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen before pyplot loads)
from PIL import Image  # noqa: E402

from ett_lightning.experiments.runs import LightningRun  # noqa: E402

ARM_COLOURS = {"frozen": "tab:blue", "ett": "tab:orange"}
MORE_COLOURS = ("tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive")  # --alphas arms


def write_markdown(results: dict[str, Any], path: Path) -> None:
    """A table a person reads first: VQA accuracy of both arms, the tokenizer before and after ETT."""
    tok = results["tokenizer"]
    seeds = ", ".join(str(s) for s in results["seeds"])
    per_seed = {arm: ", ".join(f"{100 * a:.1f}" for a in results[arm]["vqa_acc_per_seed"]) for arm in ("frozen", "ett")}
    unavailable = isinstance(tok["rfid_before"], str)
    rfid = f"{tok['rfid_before']} | " if unavailable else f"{tok['rfid_before']:.2f} | {tok['rfid_after']:.2f}"
    lines = [
        f"| arm | VQA accuracy (%) mean over seeds {seeds} | per seed |",
        "|---|---|---|",
        f"| frozen tokenizer | {100 * results['frozen']['vqa_acc']:.1f} | {per_seed['frozen']} |",
        f"| ETT (end-to-end) | {100 * results['ett']['vqa_acc']:.1f} | {per_seed['ett']} |",
        "",
        f"ETT - frozen: **{results['ett_minus_frozen_points']:+.1f} points**{interval_text(results)}.",
        "",
        *blind_lines(results),
        *answer_type_lines(results),
        "| tokenizer | before ETT | after ETT |",
        "|---|---|---|",
        f"| PSNR (dB) | {tok['psnr_before']:.2f} | {tok['psnr_after']:.2f} |",
        f"| codebook usage (val) | {tok['codebook_usage_before']:.3f} | {tok['codebook_usage_after']:.3f} |",
        f"| rFID | {rfid} |",
        *probe_lines(results),
        *health_lines(results),
        *alpha_lines(results),
        "",
        f"Quantizer: {results.get('quantizer', 'vq')}. "
        f"PSNR drop: {results['psnr_drop_db']:.2f} dB. Wall time {results['wall_seconds']:.0f} s on "
        f"{results['machine']['processor']} ({machine_text(results['machine'])}).",
        *time_lines(results),
    ]
    path.write_text("\n".join(lines) + "\n")


HEALTH_ROWS = (("probe_index_flips", "probe token positions whose code changed (%)", 100.0),
               ("probe_psnr_drop", "probe PSNR drop (dB)", 1.0),
               ("probe_usage_ratio", "probe codebook usage / start's", 1.0),
               ("codebook_drift", "codebook drift, ||W - W0|| / ||W0||", 1.0),
               ("encoder_drift", "encoder drift, ||W - W0|| / ||W0||", 1.0),
               ("guard_trips", "tokenizer guard trips", 1.0))


def health_lines(results: dict[str, Any]) -> list[str]:
    """How far stage 2 moved the tokenizer, at its last health check (the frozen arm's does not move)."""
    ett = results.get("health", {}).get("ett")
    if not ett:
        return []
    lines = ["", "| tokenizer after stage 2 (last health check) | frozen | ETT |", "|---|---|---|"]
    return lines + [f"| {label} | 0 (not trained) | {scale * ett[name]:.3g} |" for name, label, scale in HEALTH_ROWS
                    if name in ett]


def alpha_lines(results: dict[str, Any]) -> list[str]:
    """The ETT arms side by side by loss weight alpha: what VQA gained against what the tokenizer lost."""
    rows = results.get("alphas")
    if not rows:
        return []

    def cell(row: dict[str, Any], name: str, scale: float = 100.0) -> str:
        return f"{scale * row[name]:.1f}" if name in row else "-"

    frozen = 100 * results["frozen"]["vqa_acc"]
    lines = ["", f"Stage 2 at each alpha (the frozen arm: {frozen:.1f} % VQA):", "",
             "| alpha | VQA (%) | character questions (%) | probe: character (%) | PSNR drop (dB) | index flips (%) "
             "| probe usage / start | guard trips |", "|---|---|---|---|---|---|---|---|"]
    return lines + [f"| {row['alpha']:g} | {cell(row, 'vqa_acc')} | {cell(row, 'vqa_acc_word')} | "
                    f"{cell(row, 'probe_word')} | {row['psnr_drop_db']:.2f} | {cell(row, 'probe_index_flips')} | "
                    f"{cell(row, 'probe_usage_ratio', 1.0)} | {cell(row, 'guard_trips', 1.0)} |" for row in rows]


def time_lines(results: dict[str, Any]) -> list[str]:
    """Seconds per stage, each run's command with its process start-up (the arms' runs overlap in time), and the
    torch threads each run had."""
    if "seconds_per_run" not in results:
        return []
    threads = results.get("threads_per_run", {})
    rows = [f"| {stage} | {'kept (--reuse)' if s is None else f'{s:.1f}'} | "
            f"{', '.join('default' if t is None else str(t) for t in threads.get(stage, [])) or '-'} |"
            for stage, s in results["seconds_per_run"].items()]
    return ["", "| stage (mean over seeds) | seconds | torch threads (per seed) |", "|---|---|---|", *rows]


def machine_text(machine: dict[str, Any]) -> str:
    """How the runs shared the machine, e.g. "2 run(s) at once, 1 torch thread each, every core for a chain
    left alone"."""
    threads, at_once = machine["torch_threads"], machine.get("runs_at_once", 1)
    alone = ", every core for a chain left alone" if at_once > 1 else ""
    return f"{at_once} run(s) at once, {threads} torch thread{'s' * (threads != 1)} each{alone}"


def interval_text(results: dict[str, Any]) -> str:
    if "ett_minus_frozen_interval_95" not in results:
        return ""
    low, high = results["ett_minus_frozen_interval_95"]
    return f" (95 % interval {low:+.1f} to {high:+.1f}, paired bootstrap over seeds and questions)"


def probe_lines(results: dict[str, Any]) -> list[str]:
    """Table rows for CodeProbe's accuracy from the codes (character, colour), per seed after ETT."""
    if "probe" not in results:
        return []
    rows = [("character", results["probe"])] + ([("colour", results["probe"]["colour"])]
                                               if "colour" in results["probe"] else [])
    return [f"| probe: {name} from the codes (%) | {100 * probe['frozen']:.1f} | {100 * probe['ett']:.1f} "
            f"(per seed {', '.join(f'{100 * a:.1f}' for a in probe['ett_per_seed'])}) |" for name, probe in rows]


def blind_lines(results: dict[str, Any]) -> list[str]:
    """Each arm's accuracy with grey images (its answer priors), and a warning when no arm beats its own."""
    if not all("vqa_acc_blind" in results[arm] for arm in ("frozen", "ett")):
        return []
    blind = {arm: 100 * results[arm]["vqa_acc_blind"] for arm in ("frozen", "ett")}
    lines = [f"With grey images instead of the real ones (answer priors only): frozen {blind['frozen']:.1f}, "
             f"ETT {blind['ett']:.1f}.", ""]
    if all(100 * results[arm]["vqa_acc"] <= blind[arm] + 1.0 for arm in blind):
        lines += ["**Neither arm scores more than 1 point above its grey-image answers: the models are not using "
                  "the image, so this comparison says nothing about the tokenizer.**", ""]
    return lines


def answer_type_lines(results: dict[str, Any]) -> list[str]:
    """Accuracy per answer type for both arms, beside the same arm's grey-image accuracy where it was logged."""
    suffixes = (name.removeprefix("vqa_acc_") for name in results["frozen"] if name.startswith("vqa_acc_"))
    kinds = sorted(kind for kind in suffixes if kind != "per_seed" and not kind.startswith("blind"))
    if not kinds:
        return []

    def cell(arm: str, name: str) -> str:
        return f"{100 * results[arm][name]:.1f}" if name in results[arm] else "-"

    lines = ["| answer type | frozen | frozen, grey images | ETT | ETT, grey images |", "|---|---|---|---|---|"]
    lines += [f"| {kind} | {cell('frozen', f'vqa_acc_{kind}')} | {cell('frozen', f'vqa_acc_blind_{kind}')} | "
              f"{cell('ett', f'vqa_acc_{kind}')} | {cell('ett', f'vqa_acc_blind_{kind}')} |" for kind in kinds]
    return [*lines, ""]


def write_figure(arms: dict[str, dict[str, list[LightningRun]]], before: LightningRun, after: list[LightningRun],
                 seeds: list[int], path: Path, tuned: dict[str, dict[str, list[LightningRun]]]) -> None:
    """Caption loss of both arms in stage 2 and 3 (first seed), input|reconstruction pairs before and after ETT
    (first seed), per seed: both arms' VQA and character accuracy, and the code probe before and after; and how
    far stage 2 moved the tokenizer of each arm in ``tuned`` (first seed)."""
    figure = plt.figure(figsize=(12, 13.5), layout="constrained")
    top, middle, bottom, drift = figure.subfigures(4, 1, height_ratios=[1, 0.7, 1, 0.8])
    for axis, stage, title in zip(top.subplots(1, 2), ("tune", "posttrain"),
                                  ("stage 2: caption loss", "stage 3: VQA answer loss")):
        for arm, runs in arms.items():
            steps, values = runs[stage][0].curve("train/caption")
            axis.plot(steps, values, label=arm, color=ARM_COLOURS[arm])
        axis.set(title=title, xlabel="step", ylabel="loss")
        axis.legend()
    for axis, run, title in zip(middle.subplots(1, 2), (before, after[0]),
                                ("before ETT (input | reconstruction)", "after ETT (input | reconstruction)")):
        axis.imshow(Image.open(sorted((run.out / "reconstructions").glob("*.png"))[-1]))
        axis.set_title(title)
        axis.axis("off")
    accuracy_axis, probe_axis = bottom.subplots(1, 2)
    plot_seed_accuracies(accuracy_axis, arms, seeds)
    plot_seed_probes(probe_axis, before, after, seeds)
    plot_drift(drift.subplots(1, 2), tuned)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_seed_accuracies(axis: plt.Axes, arms: dict[str, dict[str, list[LightningRun]]], seeds: list[int]) -> None:
    """Bars per seed: each arm's VQA accuracy (solid) and its accuracy on the character questions (hatched), with
    black ticks at the same model's accuracy on grey images (its answer priors)."""
    width = 0.2
    for offset, (arm, runs) in enumerate(arms.items()):
        metrics = [run.metrics() for run in runs["vqa"]]
        for shift, kind, hatch in ((0, "", None), (2, "_word", "//")):
            if not all(f"val/vqa_acc{kind}" in m for m in metrics):
                continue
            positions = [i + (offset + shift - 1.5) * width for i in range(len(seeds))]
            axis.bar(positions, [100 * m[f"val/vqa_acc{kind}"] for m in metrics], width, color=ARM_COLOURS[arm],
                     hatch=hatch, label=f"{arm}: {'all questions' if hatch is None else 'character'}")
            if all(f"val/vqa_acc_blind{kind}" in m for m in metrics):
                axis.scatter(positions, [100 * m[f"val/vqa_acc_blind{kind}"] for m in metrics], marker="_", s=300,
                             color="black", label="grey images" if offset == shift == 0 else None)
    axis.set(title="held-out VQA accuracy per seed", xlabel="seed", ylabel="%", xticks=range(len(seeds)),
             xticklabels=seeds, ylim=(0, 100))
    axis.legend(fontsize="small", loc="upper right", ncols=3)


def plot_seed_probes(axis: plt.Axes, before: LightningRun, after: list[LightningRun], seeds: list[int]) -> None:
    """The code probe's character accuracy per seed after ETT, against the pre-trained tokenizer's."""
    reference = before.metrics()
    if "val/probe_word" not in reference:
        axis.axis("off")
        return
    axis.bar(range(len(seeds)), [100 * run.metrics()["val/probe_word"] for run in after], 0.5,
             color=ARM_COLOURS["ett"], label="after ETT")
    axis.axhline(100 * reference["val/probe_word"], color=ARM_COLOURS["frozen"], label="before ETT (frozen arm)")
    axis.set(title="code probe: character from the codes", xlabel="seed", ylabel="%", xticks=range(len(seeds)),
             xticklabels=seeds, ylim=(0, 100))
    axis.legend(fontsize="small", loc="upper right")


def plot_drift(axes, tuned: dict[str, dict[str, list[LightningRun]]]) -> None:
    """Per stage-2 step, first seed: the probe positions whose code changed, and the probes' PSNR drop."""
    colours = {**dict(zip([arm for arm in tuned if arm not in ARM_COLOURS], itertools.cycle(MORE_COLOURS))),
               **ARM_COLOURS}
    for axis, (name, scale, label) in zip(axes, (("probe_index_flips", 100.0, "% of probe positions"),
                                                 ("probe_psnr_drop", 1.0, "dB"))):
        for arm, runs in tuned.items():
            run = runs["tune"][0]
            if arm == "frozen":
                steps = run.curve("train/caption")[0]
                axis.plot(steps, [0.0] * len(steps), label="frozen (not trained)", color=ARM_COLOURS["frozen"])
            else:
                steps, values = run.curve(f"health/{name}")
                axis.plot(steps, [scale * v for v in values], label=arm, color=colours[arm])
        title = "stage 2: probe codes changed" if name == "probe_index_flips" else "stage 2: probe PSNR drop"
        axis.set(title=title, xlabel="step", ylabel=label)
        axis.legend(fontsize="small")
