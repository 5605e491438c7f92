"""Ray Train: the run configuration (``config``), the per-worker loop (``worker``) and the trainer that
starts it (``trainer``), the one training step (``optim``), data, augmentation, validation, resume and
storage retries."""
