"""Training: the Lightning task (loss and optimisation), its callbacks, checkpoints, and `train(cfg)`."""
