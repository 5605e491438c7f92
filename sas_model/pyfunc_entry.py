"""MLflow "models from code" entry point: the logged model is this file, not a pickled object."""

import mlflow.models

from sas_model.pyfunc import SASPyfuncModel

mlflow.models.set_model(SASPyfuncModel())
