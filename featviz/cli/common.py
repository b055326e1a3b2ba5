"""Options and config handling shared by the gallery and audit commands."""
from __future__ import annotations


def add_dream_budget_args(p, default_budget: float) -> None:
    # no argparse defaults here: a flag the user did not give must not override a preset
    p.set_defaults(default_budget=default_budget)
    p.add_argument("--budget-seconds", dest="budget_seconds", type=float,
                   help=f"dreaming time per target (default: the preset's, else {default_budget:g})")
    p.add_argument("--steps", type=int, help="relaxation steps per target instead of a time "
                   "budget (with --swap-iters: reruns give byte-identical results)")
    p.add_argument("--swap-iters", dest="swap_iters", type=int,
                   help="swap iterations per target instead of a time budget")
    p.add_argument("--config", help="YAML preset for the dreaming settings (see configs/)")
    p.add_argument("--backend", choices=["auto", "jax", "torch"],
                   help="relaxation backend (default torch; auto = JAX where supported)")


def budget_dream_config(args):
    """DreamConfig from the command line: a YAML preset (optional), the seed, and either a
    per-target time budget (step counts stop limiting) or fixed step counts (no budget,
    so the result does not depend on the machine's speed)."""
    from featviz.config import load_config
    from featviz.search.config import DreamConfig
    fixed = args.steps is not None or args.swap_iters is not None
    over = {"seed": args.seed, "budget_seconds": None if fixed else args.budget_seconds,
            "backend": args.backend}
    over = {k: v for k, v in over.items() if v is not None}     # only what the user gave
    dream = load_config(args.config, over).dream if args.config else DreamConfig(**over)
    if not fixed and dream.budget_seconds is None:              # neither flag nor preset
        dream.budget_seconds = args.default_budget
    if fixed:
        dream.budget_seconds = None
        dream.relax.steps = args.steps if args.steps is not None else dream.relax.steps
        dream.swaps.swap_iters = args.swap_iters if args.swap_iters is not None else dream.swaps.swap_iters
    else:
        dream.relax.steps = dream.swaps.swap_iters = None            # no limit: the budget bounds them
    return dream.check()
