"""Galleries on a Ray cluster (``featviz gallery --ray [ADDRESS]``).

Ray is the engine ML clusters already run, so featviz writes no scheduler: each worker is
a Ray actor that loads the model once (one GPU per actor where there are GPUs) and
serves two calls, a corpus part's mining state (``mining.miner.mine_part``) and the dreams
of a group of targets (``search.api.dream_group``).  The driver merges the mining parts
(exactly: ``Miner.merge``), hands out groups as workers free up, and writes every
finished target itself, atomically, as a single-process gallery does, so resuming works
the same with or without Ray.  A worker that dies mid-group has its group retried on
another worker; nothing is lost and nothing is written twice.
"""
from __future__ import annotations

import copy
import os
import socket

import torch

from featviz.errors import FeatvizError

LOCAL = (None, "", "auto", "local")


def require_ray():
    """The ``ray`` module, or a one-line error saying what to install."""
    try:
        import ray
    except ImportError:
        raise FeatvizError("--ray needs the ray package; pip install 'featviz[ray]'") from None
    return ray


def connect(address: str | None, workers: int | None = None):
    """The ``ray`` module, connected: ``auto`` (or no address) starts a local cluster,
    anything else is HOST:PORT of a running one (checked first, so an unreachable address
    is a quick one-line error, not Ray's long retry loop)."""
    ray = require_ray()
    if ray.is_initialized():
        return ray
    if address in LOCAL:
        ray.init(num_cpus=workers or os.cpu_count() or 1, include_dashboard=False,
                 log_to_driver=False, configure_logging=False)
        return ray
    check_address(address)
    try:
        ray.init(address=address, log_to_driver=False, configure_logging=False)
    except Exception as e:  # noqa: BLE001 - Ray raises many kinds
        raise FeatvizError(f"cannot join the Ray cluster at '{address}': "
                           f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    return ray


def check_address(address: str | None) -> None:
    """A HOST:PORT that nothing answers on is a one-line error within seconds (Ray itself
    would retry for minutes); no address or ``auto`` means a local cluster."""
    if address in LOCAL:
        return
    host, _, port = str(address).removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=5).close()
    except (OSError, ValueError) as e:
        raise FeatvizError(f"cannot reach the Ray cluster at '{address}' "
                           f"({getattr(e, 'strerror', None) or e}); start one with `ray start "
                           "--head` there, or pass --ray auto for a local one") from None


class Worker:
    """One model per actor; the driver calls ``mine`` and ``dream``."""

    def __init__(self, spec: str, device: str, trust_remote_code: bool, threads: int):
        from featviz.model.loading import load_model
        torch.set_num_threads(threads)          # the driver's: the same float arithmetic
        self.handle = load_model(spec, trust_remote_code=trust_remote_code, device=device)

    def fingerprint(self) -> str:
        from featviz.mining.cache import model_fingerprint
        return model_fingerprint(self.handle)

    def pid(self) -> int:
        return os.getpid()

    def _targets(self, names):
        from featviz.targets.spec import parse_target
        return [parse_target(n, self.handle) for n in names]

    def mine(self, names, cfg, source, part):
        from featviz.mining.miner import mine_part
        return mine_part(self.handle, self._targets(names), cfg, source=source, part=part,
                         progress=False)

    def dream(self, names, cfg):
        from featviz.search.api import dream_group
        return dream_group(self.handle, self._targets(names), cfg)


class RayRunner:
    """The two stages of a gallery, spread over Ray actors (see the module docstring)."""

    def __init__(self, handle, address: str | None, workers: int | None,
                 trust_remote_code: bool = False):
        from featviz.mining.cache import model_fingerprint
        from featviz.model.loading import EMBEDDED
        if not (os.path.exists(handle.name) or handle.name in EMBEDDED
                or handle.name.count("/") == 1):
            raise FeatvizError(f"--ray needs a model its workers can load by name (a folder, "
                               f"a .gguf file or a hub id); '{handle.name}' is not one")
        self.ray = connect(address, workers)
        gpu = handle.device.type == "cuda"
        n = workers or max(1, int(self.ray.cluster_resources().get("GPU" if gpu else "CPU", 1)))
        actor = self.ray.remote(num_gpus=1 if gpu else 0, num_cpus=0 if gpu else 1)(Worker)
        device = "cuda" if gpu else "cpu"
        self.workers = [actor.options(name=f"featviz-worker-{os.getpid()}-{i}").remote(
            handle.name, device, trust_remote_code, torch.get_num_threads()) for i in range(n)]
        prints = set(self.ray.get([w.fingerprint.remote() for w in self.workers]))
        if prints != {model_fingerprint(handle)}:
            raise FeatvizError(f"the Ray workers loaded other weights than '{handle.name}' "
                               "here; give every machine the same model files")

    def mine(self, targets, cfg, source):
        """Every corpus part on its own worker, merged in part order (exactly one pass)."""
        names, n = [str(t) for t in targets], len(self.workers)
        states = self._map([(w, "mine", (names, cfg, source, (i + 1, n)))
                            for i, w in enumerate(self.workers)])
        states = [copy.deepcopy(s) for s in states]      # Ray hands back read-only arrays
        miner = states[0]
        for s in states[1:]:
            miner.merge(s)
        return miner.finish()

    def dream(self, groups: list, cfg):
        """Yield (group index, outcomes) as groups finish; a group whose worker died goes
        to another worker."""
        ray = self.ray
        queue = list(range(len(groups)))
        idle, running = list(self.workers), {}
        while queue or running:
            while queue and idle:
                g, w = queue.pop(0), idle.pop(0)
                running[w.dream.remote([str(t) for t in groups[g]], cfg)] = (g, w)
            ready, _ = ray.wait(list(running), num_returns=1)
            g, w = running.pop(ready[0])
            try:
                outcomes = ray.get(ready[0])
            except ray.exceptions.RayActorError:          # the worker died: retry elsewhere
                self.workers = [x for x in self.workers if x is not w]
                if not self.workers:
                    raise FeatvizError("every Ray worker died; finished targets are saved, "
                                       "re-run the same command to resume") from None
                queue.insert(0, g)
                continue
            idle.append(w)
            yield g, outcomes

    def _map(self, calls: list) -> list:
        """Run (worker, method, args) calls; a call whose worker died is retried on a live
        one."""
        ray = self.ray
        out = [None] * len(calls)
        pending = {getattr(w, m).remote(*a): (i, w) for i, (w, m, a) in enumerate(calls)}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            i, w = pending.pop(ready[0])
            try:
                out[i] = ray.get(ready[0])
            except ray.exceptions.RayActorError:
                self.workers = [x for x in self.workers if x is not w]
                if not self.workers:
                    raise FeatvizError("every Ray worker died") from None
                live = self.workers[i % len(self.workers)]
                _, m, a = calls[i]
                pending[getattr(live, m).remote(*a)] = (i, live)
        return out

    def close(self) -> None:
        for w in self.workers:
            self.ray.kill(w)
