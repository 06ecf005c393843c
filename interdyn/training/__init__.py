"""Training: the LightningModule (module.py, built by setup.py), the EDM objective, optimizers, the moving
average of weights, checkpoints and resuming. Importing this package loads nothing: its modules are
imported by name."""
