"""Training: the Trainer subclass, checkpoints, settings."""
