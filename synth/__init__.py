"""Synthetic occlusion scenes, the layering function and the dataset schema.

- ``layering.compute_layers``: depth order + amodal masks -> occlusion DAG, layers, M_k, C_k.
- ``render.render_scenes`` / ``render_block``: vectorised scene renderer (shapes, textures,
  backgrounds), deterministic per (seed, scene id).
- ``schema``: the versioned one-row-per-scene Arrow schema and its encode/decode pair.
- ``reader``: manifest, checks, decoded scenes and (image, C_k, M_k, k) training samples.
- ``generate.py`` (Ray Data job -> Parquet shards + manifest.json), ``preview.py`` (contact sheet),
  ``import_dataset.py`` (COCO-style and folder datasets -> the same schema).
- ``cli`` (``UserError``, one-line errors, number parsing) and ``ray_runtime`` (Ray start-up,
  embedded or cluster): shared by every command line of the project, ``pipelines``' included.
"""
