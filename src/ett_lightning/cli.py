"""The ``lightning`` and ``ett`` console scripts: LightningCLI over any module / datamodule by class_path."""

from __future__ import annotations

import sys

from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningCLI

from ett_lightning.experiments.demo import main as demo_main
from ett_lightning.export import main as export_main
from ett_lightning.resilience import check_config


class CheckedLightningCLI(LightningCLI):
    """LightningCLI that checks the resolved configuration (paths, stage, weights, dimensions, image size)
    before instantiating anything, so a typo costs seconds, not an LLM load."""

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        check_config(config.as_dict())


def main(args: list[str] | None = None) -> None:
    """``lightning fit --config recipes/ett_sft.yaml`` (also validate / test / predict, --print_config), and
    ``ett export --ckpt run.ckpt --out DIR`` and ``ett demo``."""
    argv = sys.argv[1:] if args is None else args
    commands = {"export": export_main, "demo": demo_main}
    if argv[:1] and argv[0] in commands:
        commands[argv[0]](argv[1:])
        return
    CheckedLightningCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        args=args,
    )


if __name__ == "__main__":
    main()
