"""Dataset importers and exporters: real amodal datasets in and out of the Parquet schema.

- ``sas_folders``: the reference implementation's layout ``<id>_<k>/image.png, mask.png,
  newmask.png`` -> scenes with layer masks only (``has_instances=False``).
- ``coco``: COCO-style amodal annotations (COCOA / KINS / D2SA family) -> scenes with objects,
  ordered by ``occlusion_order`` and layered by ``synth.layering.compute_layers``.
- ``export_sas``: any dataset of ours -> the reference layout.
- ``masks``: COCO RLE (compressed and uncompressed) and polygon rasterisation, numpy only.
- ``common``: resizing, the import report, shard and manifest writing, the Ray Data fan-out.

The CLI is ``synth/import_dataset.py``.
"""
