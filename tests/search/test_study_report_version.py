"""The study report's law-version column: startup trials (no law consulted) show "-", never "vnan"."""

import math

from opsd_platform.search.report import _version


def test_law_version_cell():
    assert _version(None) == "-" and _version(math.nan) == "-" and _version("") == "-"
    assert _version(3.0) == "v3" and _version("2") == "v2" and _version(7) == "v7"
