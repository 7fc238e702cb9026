"""LiveCodeBench's test encoding: public tests as JSON, private ones as base64(zlib(pickle(json)))
decoded by an unpickler that loads plain data only, with size and depth caps.
"""

from __future__ import annotations

import base64
import io
import json
import pickle
import zlib
from typing import Any

from opsd_platform.worlds.code.extract import TESTTYPES

# ---- LiveCodeBench -----------------------------------------------------------------------


class _PlainUnpickler(pickle.Unpickler):
    """Only plain data: no class, function or global may be loaded."""

    def find_class(self, module: str, name: str):  # noqa: D401
        raise pickle.UnpicklingError(f"forbidden global {module}.{name} in test data")


_MAX_DECOMPRESSED = 512 * 1024 * 1024


def _check_plain(value: Any, depth: int = 0) -> None:
    if depth > 50:
        raise ValueError("test data nested too deeply")
    if isinstance(value, (str, int, float, bool)) or value is None:
        return
    if isinstance(value, list):
        for v in value:
            _check_plain(v, depth + 1)
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise ValueError("non-string key in test data")
            _check_plain(v, depth + 1)
        return
    raise ValueError(f"unexpected {type(value).__name__} in test data")


def decode_lcb_tests(raw: Any) -> list[dict[str, Any]]:
    """LiveCodeBench test cases: a list, a JSON string of a list, or (private tests of the
    release) base64(zlib(pickle(JSON string))). Raises ValueError with a reason."""
    if isinstance(raw, list):
        value: Any = raw
    elif raw is None or (isinstance(raw, str) and not raw.strip()):
        return []
    elif isinstance(raw, str):
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            try:
                packed = base64.b64decode(raw.strip(), validate=True)
            except (ValueError, TypeError):
                raise ValueError("neither JSON nor base64") from None
            d = zlib.decompressobj()
            try:
                data = d.decompress(packed, _MAX_DECOMPRESSED)
            except zlib.error as e:
                raise ValueError(f"base64 but not zlib data ({e})") from None
            if d.unconsumed_tail:
                raise ValueError("compressed test data larger than 512 MB")
            try:
                value = _PlainUnpickler(io.BytesIO(data)).load()
            except Exception as e:
                raise ValueError(f"bad pickled test data ({e})") from None
            _check_plain(value)
            if isinstance(value, (bytes, bytearray)):
                value = value.decode("utf-8")
            if isinstance(value, str):
                try:
                    value = json.loads(value)
                except json.JSONDecodeError as e:
                    raise ValueError(f"decompressed test data is not JSON ({e.msg})") from None
    else:
        raise ValueError(f"expected a JSON string or a list, got {type(raw).__name__}")
    if not isinstance(value, list):
        raise ValueError(f"expected a list of test cases, got {type(value).__name__}")
    out = []
    for k, tc in enumerate(value):
        if not isinstance(tc, dict) or not isinstance(tc.get("input"), str) or not isinstance(tc.get("output"), str):
            raise ValueError(f"test case {k} is not an object with string 'input' and 'output'")
        tt = tc.get("testtype", "stdin")
        if tt not in TESTTYPES:
            raise ValueError(f"test case {k} has unknown testtype {tt!r}")
        out.append({"input": tc["input"], "output": tc["output"], "testtype": tt})
    return out




