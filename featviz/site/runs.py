"""How a gallery's work is split and accounted for: shards (``--shard i/N``, for Slurm or
plain job arrays writing into one folder), the plan printed before a run, the run records
(wall time, targets per hour, device) the manifest lists, and which temp files a killed
run left behind."""
from __future__ import annotations

import os
import re
import socket
import time
import uuid

from featviz.errors import FeatvizError
from featviz.fileio import dump_json, read_json, write_atomic

STALE_AFTER_S = 600      # a temp file lives for the milliseconds of one write


def parse_shard(spec) -> tuple[int, int] | None:
    """``"i/N"`` (1 <= i <= N) or an (i, N) pair -> (i, N); None -> None."""
    if spec is None:
        return None
    if isinstance(spec, str):
        m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", spec)
        if not m:
            raise FeatvizError(f"--shard '{spec}' must be written i/N, e.g. --shard 1/4")
        spec = (int(m.group(1)), int(m.group(2)))
    try:
        i, n = (int(x) for x in spec)
    except (TypeError, ValueError):
        raise FeatvizError(f"--shard must be i/N, got {spec!r}") from None
    if n < 1 or not 1 <= i <= n:
        raise FeatvizError(f"--shard {i}/{n}: i must be between 1 and N (shards are numbered "
                           f"1/{max(n, 1)} to {max(n, 1)}/{max(n, 1)})")
    return i, n


def shard_of(items: list, shard: tuple[int, int] | None) -> list:
    """Shard i of N takes every N-th item from the i-th (round robin: each shard gets a
    share of every layer, so shards take about as long as each other)."""
    if shard is None:
        return list(items)
    i, n = shard
    return list(items[i - 1::n])


def plan_text(*, total: int, mine: int, todo: int, group: int, device: str,
              budget: float | None, shard: tuple[int, int] | None) -> str:
    """One line a user can plan by, printed before any work starts.  ``mine``: the
    targets this run is responsible for (all, or its shard's); ``budget`` None: fixed
    step counts; 0: no dreaming."""
    where = f"shard {shard[0]}/{shard[1]} takes {mine} of " if shard else ""
    groups = -(-todo // max(group, 1))
    line = (f"plan: {where}{total} targets, {mine - todo} already done, {todo} to compute on "
            f"{device} in {groups} group(s) of up to {group}")
    if budget is None:
        return line + "; fixed step counts, so no estimate yet (the bar gives one as it goes)"
    if not budget:
        return line + "; no dreaming, one mining pass"
    return line + (f"; dreaming takes about {todo * budget / 3600:.2f} h at {budget:g} s per "
                   "target, plus one mining pass")


def is_stale_temp(path: str) -> bool:
    """A temp file of ``fileio.write_atomic`` (``NAME.tmpPID``) that no running writer owns:
    its process is not alive on this machine, or it is older than any write takes.  Shards
    on other machines sharing the folder keep their in-flight files."""
    m = re.search(r"\.tmp(\d+)$", path)
    try:
        age = time.time() - os.path.getmtime(path)
    except OSError:
        return False
    if age > STALE_AFTER_S or not m:
        return True
    try:
        os.kill(int(m.group(1)), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OverflowError):
        return False
    return False


def record_run(out_dir: str, info: dict) -> None:
    """One file per run under ``runs/`` (shards never write the same file)."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    name = f"{stamp}-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}.json"
    write_atomic(os.path.join(out_dir, "runs", re.sub(r"[^A-Za-z0-9._-]", "_", name)),
                 dump_json(info))


def read_runs(out_dir: str) -> list[dict]:
    folder = os.path.join(out_dir, "runs")
    if not os.path.isdir(folder):
        return []
    out = []
    for f in sorted(os.listdir(folder)):
        if f.endswith(".json"):
            d = read_json(os.path.join(folder, f), missing_ok=True, corrupt_ok=True)
            if isinstance(d, dict):
                out.append(d)
    return out


def summarise_runs(runs: list[dict]) -> dict:
    """What the manifest says about the work so far (all runs and shards together)."""
    secs = sum(r.get("wall_seconds", 0.0) for r in runs)
    n = sum(r.get("targets_computed", 0) for r in runs)
    return {"runs": len(runs), "wall_seconds": secs, "targets_computed": n,
            "targets_per_hour": n / secs * 3600 if secs > 0 else None,
            "devices": sorted({r.get("device") for r in runs if r.get("device")})}

