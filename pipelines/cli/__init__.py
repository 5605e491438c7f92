"""What every command line of ``pipelines`` needs: flags declared on request fields (``flags``),
environment defaults (``env``), ``--set`` parsing (``args``), atomic files, progress.

``UserError``, the one-line ``error:`` exit and the number parsers (``1e5``) are in ``synth/cli.py``:
``synth`` sits below ``pipelines`` and has command lines of its own, so what both need lives there.
"""
