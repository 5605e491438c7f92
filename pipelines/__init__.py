"""The Ray/MLflow pipeline around ``sas_model`` and ``synth``.

Entry points (run as ``python pipelines/<name>.py``, or ``ray job submit --working-dir . -- python
pipelines/<name>.py`` on a cluster):

- ``train``: Ray Train run, tracked in MLflow, model registered; ``tune``: Ray Tune search of noise
  schedules and samplers; ``evaluate``: metrics on a dataset split (Ray Data batch inference);
  ``predict``: layers and objects for image files; ``main_job``: generate, train, evaluate and predict
  end to end; ``demo``: the demo page.

Helpers, one sub-package per concern (imports point down this list, never up):

- ``cli``: what every command line needs: environment defaults, ``--set`` parsing, atomic files,
  progress lines;
- ``tracking``: MLflow: which store, the run record, the registry and its champion alias, lineage;
- ``training``: the run configuration, the Ray Train worker and its one training step, data,
  augmentation, validation, resume and retries;
- ``tuning``: Tune's search space and its report;
- ``inference``: finding a model, the flags ``evaluate`` and ``predict`` share, the evaluation report;
- ``bench``: benchmarks and probes (single process unless named otherwise), the record behind
  docs/RESULTS.md.

The project is importable once installed (``bash infra/setup_venv.sh`` installs it in editable mode);
on a cluster, Ray's ``--working-dir`` puts the repository on ``PYTHONPATH``. No script edits
``sys.path``.
"""
