"""``python -m ett_lightning``: the ``ett`` command line, for launchers that run a module, e.g.
``torchrun --nproc_per_node=8 -m ett_lightning fit --config recipes/ett_sft.yaml``."""

from ett_lightning.commands.ett import console

if __name__ == "__main__":
    console()
