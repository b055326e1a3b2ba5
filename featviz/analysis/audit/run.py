"""Running an audit: mine, dream and run every check for each target."""
from __future__ import annotations

import math
import time
from dataclasses import asdict

from tqdm.auto import tqdm

from featviz.analysis.audit.checks import CHECKS, Subject
from featviz.analysis.audit.figures import reduced_position, sample_windows
from featviz.analysis.audit.report import AuditConfig, AuditReport, TargetAudit
from featviz.errors import FeatvizError
from featviz.mining.cache import mine_cached
from featviz.mining.records import TargetExemplars
from featviz.model.vocab import readable_mask
from featviz.search.api import dream
from featviz.search.result import DreamResult
from featviz.targets.core import Target
from featviz.targets.read import score_ids
from featviz.targets.spec import as_target


# ---------------------------------------------------------------- the run
def audit_one(handle, target: Target, ex: TargetExemplars, res: DreamResult, cfg: AuditConfig,
              ctx_rows: list, base_rows: list, mask) -> TargetAudit:
    """All checks for one target, given its mined exemplars and dreaming result."""
    t0 = time.perf_counter()
    syn = res.best_fluent or res.best
    syn_ids = list(syn.token_ids) if syn else []
    syn_pos = 0
    if syn_ids:
        full = [[handle.bos_id] + syn_ids]
        _, _, per = score_ids(handle, [target], full, per_span=(0, len(full[0])))
        syn_pos = reduced_position(target, per[0].float())
    subject = Subject(handle, target, ex, res, cfg, ctx_rows, base_rows, mask, syn_ids,
                      syn.activation if syn else None, syn_pos)
    checks = [c for check in CHECKS for c in check(subject)]
    c = lambda x: None if x is None else {"text": x.text, "activation": x.activation,  # noqa: E731
                                          "xe": x.xe, "tokens": x.tokens}
    return TargetAudit(
        target=str(target), description=target.describe(handle), checks=checks,
        corpus={"max": ex.max if math.isfinite(ex.max) else None, "density": ex.density,
                "n_windows": ex.n_windows, "n_tokens": ex.n_tokens, "nonfinite": ex.nonfinite},
        synthetic={"best": c(res.best), "best_fluent": c(res.best_fluent),
                   "xe_cap": res.config.get("xe_cap")},
        seconds=time.perf_counter() - t0)


def audit(handle, targets, config: AuditConfig | None = None, *, progress: bool = True,
          mined: list | None = None, dreams: list | None = None) -> AuditReport:
    """Mine, dream and check every target.  ``mined`` / ``dreams`` reuse earlier results
    (one per target, in order) instead of recomputing them."""
    cfg = (config or AuditConfig()).check()
    targets = [as_target(t, handle) for t in (targets if isinstance(targets, list) else [targets])]
    if not targets:
        raise FeatvizError("no targets given; pass e.g. --target mlp:6:12")
    if mined is None:
        mined, _ = mine_cached(handle, targets, cfg.corpus, cfg.mine, cache_dir=cfg.cache_dir,
                               progress=progress)
    ctx_rows, base_rows = sample_windows(handle, cfg, [(cfg.contexts, cfg.context_len + 1),
                                                        (cfg.baseline, 3)])
    mask = readable_mask(handle, cfg.dream.vocab)
    out = []
    bar = tqdm(total=len(targets), unit="target", desc="auditing", disable=not progress)
    for i, (t, ex) in enumerate(zip(targets, mined)):
        res = dreams[i] if dreams is not None else dream(handle, t, cfg.dream, progress=progress)
        out.append(audit_one(handle, t, ex, res, cfg, ctx_rows, base_rows, mask))
        bar.update(1)
    bar.close()
    return AuditReport(model=handle.describe(), corpus=cfg.corpus or "wiki",
                       thresholds=asdict(cfg.thresholds), targets=out)
