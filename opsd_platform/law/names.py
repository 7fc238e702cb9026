"""Names the law stage shares with the stages above it: the registered model's default name, its
aliases and the fitting methods. Imports nothing, so a config that names them (``law.method``,
``search.law_alias``) is checked without loading pandas or MLflow, and the law model's carried code
(registry._law_code) needs nothing more for them."""

DEFAULT_NAME = "opsd-gap-law"
CHAMPION = "champion"
CHALLENGER = "challenger"
METHODS = ("ols", "wls", "hc3")
