"""MLflow: which store (``store``), a training run's record (``runs``), the registry and its champion
alias (``registry``), dataset lineage (``lineage``)."""
