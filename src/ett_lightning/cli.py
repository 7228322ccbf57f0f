"""The ``lightning`` and ``ett`` console scripts: LightningCLI over any module / datamodule by class_path."""

from __future__ import annotations

from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningCLI


def main(args: list[str] | None = None) -> None:
    """``lightning fit --config recipes/ett_sft.yaml`` (also validate / test / predict, --print_config)."""
    LightningCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        args=args,
    )


if __name__ == "__main__":
    main()
