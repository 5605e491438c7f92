"""Training: the run configuration and ``TrainRequest`` (``config``), launching one run
(``launch``), the per-worker loop (``worker``) and the trainer that starts it (``trainer``), the one
training step (``optim``), data, augmentation, validation, resume and storage retries; Ray-free: the
pretraining of the shipped model (``pretraining``, ``scenes``, ``local``) and its card (``card``)."""
