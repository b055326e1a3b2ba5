"""The audit: evidence for and against what a feature seems to mean.

    report = featviz.audit.audit(handle, ["mlp:3:17"], AuditConfig())
    print(format_report(report))

For each target it mines the corpus, dreams, and runs seven checks, each with its
figures, the thresholds it used, and a verdict ("ok", "flag", or "n/a" when the
check cannot apply; "info" for the attribution, which has no verdict):

1. superstimulus       best fluent synthetic / corpus max
2. hidden-trigger      the unit almost never fires on the corpus, synthetic text drives it
3. fluency-gap         activation with no fluency cap / with the cap
4. context             synthetic text after random corpus contexts; exemplars with their
                       leading context swapped
5. path                hidden states below the target: synthetic vs top exemplars, against
                       random corpus positions
6. attribution         per-token drop when a token is replaced by its best alternative
7. polysemantic        do the top exemplars split into two separate groups?

The math lives in pure functions (``span_value``, ``path_scores``, ``two_groups``,
``drops``) so each can be tested on arrays whose answer is known.
"""
from featviz.analysis.audit.checks import (
    CHECKS,
    attribution_check,
    context_check,
    path_check,
    poly_check,
    scalar_checks,
)
from featviz.analysis.audit.figures import (
    attribute,
    drops,
    path_scores,
    span_value,
    two_groups,
    values_batched,
)
from featviz.analysis.audit.report import (
    AUDIT_VERSION,
    AuditConfig,
    AuditReport,
    Check,
    TargetAudit,
    format_report,
    summary_line,
)
from featviz.analysis.audit.run import audit, audit_one

__all__ = ["CHECKS", "AUDIT_VERSION", "AuditConfig", "AuditReport", "Check", "TargetAudit",
           "attribute", "attribution_check", "audit", "audit_one", "context_check", "drops",
           "format_report", "path_check", "path_scores", "poly_check", "scalar_checks",
           "span_value", "summary_line", "two_groups", "values_batched"]
