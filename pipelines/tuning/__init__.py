"""Ray Tune: the search space (``space``) and the report of a finished search (``report``)."""
