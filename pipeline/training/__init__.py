"""Training on Ray Train: data, the loop, checkpoints, the trainer and λ sweeps."""
