"""Public API of `opsd_platform.law`: re-exported from `fit.py`."""

from opsd_platform.law.fit import (  # noqa: F401
    REQUIRED_COLUMNS,
    GROUP_COLUMNS,
    METHODS,
    FORMAT_VERSION,
    WLS_VARIANCE_FLOOR_FRACTION,
    LawError,
    aggregate,
    LawFit,
    fit_law,
    leave_one_out,
    grouped_holdout,
    family_slopes,
)
