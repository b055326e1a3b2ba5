"""Files that are never half-written, and JSON that is always valid."""
from __future__ import annotations

import json
import math
import os

from featviz.errors import FeatvizError


def clean(x):
    """JSON-safe copy: NaN/Inf become null so the output stays valid JSON."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [clean(v) for v in x]
    return x


def dump_json(obj, indent: int | None = 1) -> str:
    return json.dumps(clean(obj), indent=indent, ensure_ascii=False, allow_nan=False,
                      separators=None if indent else (",", ":"))


def write_atomic(path: str, text: str) -> None:
    """Write a file so that readers never see it half-written (temp file + rename)."""
    d = os.path.dirname(os.path.abspath(path))
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        os.makedirs(d, exist_ok=True)
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:          # also Ctrl-C mid-write: leave no temp file behind
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError):
            raise FeatvizError(f"cannot write '{path}': {e.strerror}") from None
        raise


def read_json(path: str, *, missing_ok: bool = False, corrupt_ok: bool = False):
    """Parsed JSON of a file; None when it is missing (or corrupt) and that is allowed."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        if missing_ok:
            return None
        raise FeatvizError(f"file '{path}' does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        if corrupt_ok:
            return None
        raise FeatvizError(f"file '{path}' is not valid JSON ({e}); delete it and re-run") from None
    except OSError as e:
        raise FeatvizError(f"cannot read '{path}': {e.strerror}") from None
