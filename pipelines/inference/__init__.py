"""Batch inference and what sits on it: finding a model (``models``), the typed requests of
``evaluate.py`` and ``predict.py`` (``request``) and their shared flags (``options``), the runs on Ray
Data (``evaluation``, ``prediction``), the evaluation report (``eval_report``), the demo page
(``demo_app``) and the main job's stages (``stages``)."""
