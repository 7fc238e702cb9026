"""The gap law as an MLflow pyfunc, logged "from code" (no pickle): see registry.register_law.

MLflow copies this file into the model and executes it at load time; the fitted law travels as
the model artifact ``law`` (``LawFit.to_dict()`` as JSON), so loading needs ``opsd_platform``
importable.
"""

import json

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel

from opsd_platform.law import LawFit


class GapLawModel(PythonModel):
    """predict(df[gap, covariates...], params={"level": 0.9}) -> df[predicted_improvement, lower, upper]."""

    def load_context(self, context):
        with open(context.artifacts["law"], encoding="utf-8") as fh:
            self.fit = LawFit.from_dict(json.load(fh))

    # pd.DataFrame hint: MLflow then skips type-hint validation and uses the logged signature.
    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        level = (params or {}).get("level")
        return self.fit.predict(model_input, level=self.fit.level if level is None else level)


mlflow.models.set_model(GapLawModel())
