"""Batch inference for ``evaluate.py`` and ``predict.py``: finding a model (``models``), the flags they
share (``options``), the evaluation report (``eval_report``)."""
