"""The gap law as an MLflow pyfunc, logged "from code" (no pickle): see registry.register_law.

MLflow copies this file into the model and executes it at load time; the fitted law travels as
the model artifact ``law`` (``LawFit.to_dict()`` as JSON). Its code travels too: the model
carries a copy of the ``opsd_platform.law`` package, used when no opsd_platform is installed, so
it loads wherever its declared requirements are (``mlflow models serve --env-manager
virtualenv``), not only beside the platform.

Serving is where inputs come from outside: a gap outside [-1, 1] (a difference of two pass rates),
a missing or non-numeric value, or a level outside (0, 1) is refused with one line (MLflow's
scoring server answers it with a 400), and a prediction is clipped to [-1, 1], what an improvement
(also a difference of pass rates) can be; the ``clipped`` column says when it was.
"""

import json
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pyfunc import PythonModel

try:  # an installed opsd_platform: the platform itself, or a notebook beside it
    from opsd_platform.law import LawError, LawFit
except ImportError:  # anywhere else: the copy the model carries (registry._law_code; "opsd_law_code")
    sys.path.append(str(Path(__file__).resolve().parent / "code" / "opsd_law_code"))
    from opsd_platform.law import LawError, LawFit

GAP_RANGE = (-1.0, 1.0)  # a gap and an improvement are each a difference of two pass rates


def check_gaps(frame: pd.DataFrame) -> None:
    """LawError naming the first gap outside GAP_RANGE (non-finite values are LawFit.design's)."""
    if "gap" not in frame.columns or not pd.api.types.is_numeric_dtype(frame["gap"]):
        return  # LawFit.design names the problem
    gaps = frame["gap"].to_numpy(dtype=float)
    outside = np.isfinite(gaps) & ((gaps < GAP_RANGE[0]) | (gaps > GAP_RANGE[1]))
    if outside.any():
        i = int(np.flatnonzero(outside)[0])
        raise LawError(f"input: gap={gaps[i]} in row {frame.index[i]!r} is outside [-1, 1] "
                       "(a difference of two pass rates)")


def clip_predictions(out: pd.DataFrame) -> pd.DataFrame:
    """Predictions and interval bounds clipped to GAP_RANGE, with a ``clipped`` column saying where."""
    cols = ["predicted_improvement", "lower", "upper"]
    clipped = out[cols].clip(*GAP_RANGE)
    return clipped.assign(clipped=(clipped != out[cols]).any(axis=1))


class GapLawModel(PythonModel):
    """predict(df[gap, covariates...], params={"level": 0.9}) -> df[predicted_improvement, lower, upper, clipped]."""

    def load_context(self, context):
        with open(context.artifacts["law"], encoding="utf-8") as fh:
            self.fit = LawFit.from_dict(json.load(fh))

    # pd.DataFrame hint: MLflow then skips type-hint validation and uses the logged signature.
    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        level = (params or {}).get("level")
        try:
            check_gaps(model_input)
            out = self.fit.predict(model_input, level=self.fit.level if level is None else level)
        except LawError as exc:  # bad input: one line, a 400 from the scoring server
            raise MlflowException(str(exc), error_code=INVALID_PARAMETER_VALUE) from None
        return clip_predictions(out)


mlflow.models.set_model(GapLawModel())
