"""Benchmarks (``generate``, ``masks``, ``sampling``, ``train``), the learning-curve probe (``learning``)
and exploratory probes (``probes``): the measurements behind docs/RESULTS.md, run as scripts."""
