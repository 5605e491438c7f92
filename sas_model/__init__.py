"""sas_model: the conditional mask-diffusion model and the sequential segmenter (pure PyTorch, no Ray).

- ``config`` / ``presets``: ``ModelConfig`` (typed, JSON round trip, ``tiny|small|paper``)
- ``unet``, ``schedules``, ``diffusion``, ``model``: the network, noise schedules, loss, ``SASModel``
- ``samplers``: DDPM, DDIM, DPM-Solver++(2M) behind one interface
- ``segmenter`` (+ ``instances``, ``results``, ``overlay``, ``codec``): ``SequentialSegmenter``
- ``checkpoint``: self-describing directories; ``pyfunc``: the MLflow model
"""
