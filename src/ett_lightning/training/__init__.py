"""What every LightningModule here trains with: optimizer groups and schedule, gradient clipping by player, step
logging, and loading component weights from a checkpoint."""
