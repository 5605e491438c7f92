"""Ray Tune: what a search is asked (``request``), running it (``search``), its space (``space``) and
the report of a finished search (``report``)."""
