"""Fine-tune a copy of the embedded model on one topic, then ask `featviz compare` which
neurons moved, and whether the ones that moved are the ones the topic uses.

    python benchmarks/finetune_drift.py [--steps 300] [--layers 6,20] [--per-layer 128]

Topic: chemistry.  The embedded corpus's articles with at least three chemistry terms
(chemi*, molecul*, atom(s/ic), acid(s), oxid*, isotope(s), periodic table, chemical
element, compound(s)) are split 80/20 by a fixed shuffle: the 80 % is the fine-tuning
data, the held-out 20 % is the task corpus (so relevance is not measured on trained text).
Full fine-tuning of every weight but the (tied) embeddings, AdamW, on the CPU.

Writes results/finetune_drift.md and results/finetune_drift.json (per-neuron figures).
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import re
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import featviz  # noqa: E402
from benchmarks._results import HERE, write_result  # noqa: E402
from featviz.analysis.compare import CompareConfig, compare  # noqa: E402
from featviz.analysis.compare.figures import average_ranks  # noqa: E402
from featviz.mining.corpus import embedded_corpus_path  # noqa: E402
from featviz.mining.miner import MineConfig  # noqa: E402
from featviz.search.config import DreamConfig  # noqa: E402

TERMS = re.compile(r"\b(chemi\w*|molecul\w*|atoms?|atomic|acids?|oxid\w*|isotopes?|"
                   r"periodic table|chemical element|compounds?)\b", re.I)


def topic_split(seed: int = 0):
    data = json.load(open(embedded_corpus_path(), encoding="utf-8"))
    docs = [(t, (v or {}).get("extract", "").strip()) for t, v in data.items()]
    chem = [(t, x) for t, x in docs if len(TERMS.findall(x)) >= 3]
    order = np.random.default_rng(seed).permutation(len(chem))
    cut = int(0.8 * len(chem))
    return [chem[i] for i in order[:cut]], [chem[i] for i in order[cut:]]


def control_docs(handle, n_tokens: int, seed: int = 0, skip: int = 300):
    """Articles with no chemistry term, past the first ``skip`` (the mined general corpus
    comes from the start), shuffled, until they hold ``n_tokens`` tokens."""
    data = json.load(open(embedded_corpus_path(), encoding="utf-8"))
    docs = [(t, (v or {}).get("extract", "").strip()) for t, v in list(data.items())[skip:]]
    docs = [d for d in docs if d[1] and not TERMS.search(d[1])]
    out, n = [], 0
    for i in np.random.default_rng(seed).permutation(len(docs)):
        out.append(docs[i])
        n += len(handle.encode(docs[i][1])) + 2
        if n >= n_tokens:
            break
    return out


def corpus_drift(c) -> float:
    """Drift from the corpus components only (comparable between dreamed and undreamed)."""
    return float(np.mean([c.components[k] for k in ("corr", "top")]))


def token_stream(handle, docs) -> list[int]:
    out = []
    for _, text in docs:
        out += handle.encode(text) + handle.encode("\n\n")
    return out


def lm_loss(model, handle, stream, seq: int, n: int = 32) -> float:
    """Mean next-token loss over the first n windows of BOS + seq tokens."""
    rows = [[handle.bos_id] + stream[i * seq:(i + 1) * seq] for i in range(n)
            if (i + 1) * seq <= len(stream)]
    with torch.no_grad():
        x = torch.tensor(rows)
        return float(model(input_ids=x, labels=x).loss)


def finetune(handle, stream, steps: int, batch: int, seq: int, lr: float, seed: int):
    model = copy.deepcopy(handle.model)
    model.train()
    for name, p in model.named_parameters():
        p.requires_grad_("embed" not in name)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr,
                            weight_decay=0.0)
    rng = np.random.default_rng(seed)
    losses = []
    for step in range(steps):
        starts = rng.integers(0, len(stream) - seq, size=batch)
        x = torch.tensor([[handle.bos_id] + stream[s:s + seq] for s in starts])
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(float(loss))
        if step % 25 == 0:
            print(f"step {step} loss {np.mean(losses[-25:]):.3f}", flush=True)
    model.eval()
    return featviz.wrap_model(model, handle.tokenizer, name=f"{handle.name}+chem{steps}"), losses


def spearman(x, y, perms: int = 2000, seed: int = 0):
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y)
    rx, ry = average_ranks(x[ok]), average_ranks(y[ok])
    rho = float(np.corrcoef(rx, ry)[0, 1])
    rng = np.random.default_rng(seed)
    null = np.array([np.corrcoef(rx, rng.permutation(ry))[0, 1] for _ in range(perms)])
    return rho, float((np.sum(np.abs(null) >= abs(rho)) + 1) / (perms + 1)), int(ok.sum())


def snippet(handle, e, width: int = 10) -> str:
    ids = e.token_ids
    ctx = handle.decode(ids[max(1, e.peak - width): e.peak])
    return json.dumps(f"{ctx}[[{handle.decode([ids[e.peak]])}]]", ensure_ascii=False)[1:-1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--layers", default="6,20")
    ap.add_argument("--per-layer", dest="per_layer", type=int, default=128)
    ap.add_argument("--tokens", type=int, default=20_000)
    ap.add_argument("--dream-top", dest="dream_top", type=int, default=8)
    ap.add_argument("--budget", type=float, default=20.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    a = featviz.load_model()
    train, held = topic_split(args.seed)
    stream, held_stream = token_stream(a, train), token_stream(a, held)
    t0 = time.perf_counter()
    b, losses = finetune(a, stream, args.steps, args.batch, args.seq, args.lr, args.seed)
    t_ft = time.perf_counter() - t0
    tmp = tempfile.mkdtemp(prefix="featviz-chem-")
    task = os.path.join(tmp, "chemistry_heldout.txt")
    with open(task, "w", encoding="utf-8") as f:
        f.write("\n\n".join(x for _, x in held))
    from featviz.mining.corpus import windows
    general_rows = [list(w.ids[1:]) for w in windows(a, None, args.seq, max_tokens=32 * args.seq)]
    general_stream = [t for r in general_rows for t in r]
    losses_ab = {name: (lm_loss(a.model, a, s, args.seq), lm_loss(b.model, a, s, args.seq))
                 for name, s in (("chemistry (held out)", held_stream), ("wiki (general)", general_stream))}
    specs = [f"mlp:{L}:0-{args.per_layer - 1}" for L in args.layers.split(",")]
    cfg = CompareConfig(mine=MineConfig(max_tokens=args.tokens),
                        dream=DreamConfig(budget_seconds=args.budget), dream_top=args.dream_top,
                        task_corpus=task, cache_dir="")
    t0 = time.perf_counter()
    res = compare(a, specs, cfg, against=b)
    t_cmp = time.perf_counter() - t0
    del b
    ctrl_docs = control_docs(a, len(stream), args.seed)
    ctrl, ctrl_losses = finetune(a, token_stream(a, ctrl_docs), args.steps, args.batch, args.seq,
                                 args.lr, args.seed)
    losses_ab["control: chemistry (held out)"] = (losses_ab["chemistry (held out)"][0],
                                                  lm_loss(ctrl.model, a, held_stream, args.seq))
    losses_ab["control: wiki (general)"] = (losses_ab["wiki (general)"][0],
                                            lm_loss(ctrl.model, a, general_stream, args.seq))
    control = compare(a, specs, CompareConfig(mine=cfg.mine, dream=None, task_corpus=task,
                                              cache_dir=""), against=ctrl)
    report(args, a, res, losses, losses_ab, t_ft, t_cmp, len(train), len(held), len(stream),
           len(held_stream))
    control_report(args, res, control, ctrl_losses, len(ctrl_docs))


def control_report(args, res, control, losses, n_docs) -> None:
    """Is the drift topic-specific?  The same fine-tune on non-chemistry articles."""
    L = [int(x) for x in args.layers.split(",")]
    layer = lambda name: int(name.split(":")[1])  # noqa: E731
    chem = {c.target: c for c in res.targets}
    ctl = {c.target: c for c in control.targets}
    names = sorted(chem)
    gA = {n: chem[n].sides[0].relevance["g"] for n in names}
    out = ["", "## Control: the same fine-tune on non-chemistry articles", "",
           f"{n_docs} articles with no chemistry term (not among the first 300, from which the "
           f"general corpus is mined), the same token count, steps, batch, lr and seed; training "
           f"loss {np.mean(losses[:20]):.3f} -> {np.mean(losses[-20:]):.3f}. Drift here is the "
           "corpus part only (mean of (1 - r)/2 and 1 - top-k overlap), the same for every "
           "neuron of both runs.", "",
           "| layer | run | median corpus drift | 90 % | corpus drift <= 0.2 | above |",
           "|---|---|---|---|---|---|"]
    for x in L:
        for lab, d in (("chemistry", chem), ("control", ctl)):
            sel = [d[n] for n in names if layer(n) == x]
            v = np.array([corpus_drift(c) for c in sel])
            st = int(np.sum(v <= res.settings["thresholds"]["stable"]))
            out.append(f"| {x} | {lab} | {np.median(v):.3f} | {np.quantile(v, .9):.3f} | {st} | "
                       f"{len(sel) - st} |")
    out += ["", "Spearman rank correlation with task relevance g in A (p from 2000 permutations):",
            "", "| layer | drift measure | rho | p | n |", "|---|---|---|---|---|"]
    for x in L + [None]:
        sel = [n for n in names if x is None or layer(n) == x]
        for lab, fn in (("chemistry run", lambda n: corpus_drift(chem[n])),
                        ("control run", lambda n: corpus_drift(ctl[n])),
                        ("chemistry minus control", lambda n: corpus_drift(chem[n]) - corpus_drift(ctl[n]))):
            rho, p, n = spearman([fn(k) for k in sel], [gA[k] for k in sel])
            out.append(f"| {'all' if x is None else x} | {lab} | {rho:+.3f} | {p:.4f} | {n} |")
    path = os.path.join(HERE, "results", "finetune_drift.md")
    with open(path, "a") as f:
        f.write("\n".join(out) + "\n")


def report(args, a, res, losses, losses_ab, t_ft, t_cmp, n_train, n_held, tok_train, tok_held):
    rows = res.targets
    layer = lambda c: int(c.target.split(":")[1])  # noqa: E731
    g = lambda c, m: (c.sides[m].relevance or {}).get("g")  # noqa: E731
    L = [int(x) for x in args.layers.split(",")]
    out = ["# Fine-tuning drift: SmolLM2-135M (embedded) fine-tuned on chemistry", "",
           f"Fine-tuning: {args.steps} steps of AdamW (lr {args.lr:g}), batch {args.batch} x "
           f"{args.seq} tokens, every weight but the tied embeddings, on {n_train} chemistry "
           f"articles ({tok_train} tokens); {t_ft:.0f} s on this 2-core CPU. Training loss "
           f"{np.mean(losses[:20]):.3f} (first 20 steps) -> {np.mean(losses[-20:]):.3f} (last 20).",
           "", "| text | loss A (base) | loss B (fine-tuned) |", "|---|---|---|"]
    out += [f"| {k} | {va:.3f} | {vb:.3f} |" for k, (va, vb) in losses_ab.items()]
    out += ["", f"Comparison: {len(rows)} neurons (`{'`, `'.join(f'mlp:{x}:0-{args.per_layer - 1}' for x in L)}`), "
            f"general corpus = first {args.tokens} tokens of the embedded wiki, task corpus = "
            f"the {n_held} held-out chemistry articles ({tok_held} tokens); the {args.dream_top} "
            f"neurons with the highest corpus drift dreamed for {args.budget:g} s per model. "
            f"`compare` took {t_cmp:.0f} s.", "", "## Drift scores", "",
            "| layer | n | min | 10 % | median | 90 % | max | stable | shifted | born | died | flipped |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for x in L + [None]:
        sel = [c for c in rows if x is None or layer(c) == x]
        d = np.array([c.drift for c in sel])
        q = np.quantile(d, [0, .1, .5, .9, 1])
        cnt = {v: sum(c.verdict == v for c in sel) for v in ("stable", "shifted", "born", "died", "flipped")}
        out.append(f"| {'all' if x is None else x} | {len(sel)} | " + " | ".join(f"{v:.3f}" for v in q)
                   + " | " + " | ".join(str(cnt[v]) for v in cnt) + " |")
    edges = [0, .05, .1, .2, .3, .5, 1.0001]
    h = np.histogram([c.drift for c in rows], bins=edges)[0]
    out += ["", "Histogram of drift: " + ", ".join(
        f"[{edges[i]:g}, {min(edges[i + 1], 1):g}{']' if i == len(h) - 1 else ')'} {h[i]}" for i in range(len(h))),
        "", f"**{sum(c.verdict != 'stable' for c in rows)} of {len(rows)} neurons changed verdict** "
        "(anything but `stable`).", "", "## Is the drift where the task is?", "",
        "Spearman rank correlation between a neuron's drift and its task relevance (Hedges' g "
        "of per-window maxima, held-out chemistry vs general wiki); p from 2000 permutations.", "",
        "| layer | relevance measured in | rho | p | n |", "|---|---|---|---|---|"]
    for x in L + [None]:
        sel = [c for c in rows if x is None or layer(c) == x]
        for lab, fn in (("A (base)", lambda c: g(c, 0)), ("B (fine-tuned)", lambda c: g(c, 1)),
                        ("abs(g_B - g_A)", lambda c: abs(g(c, 1) - g(c, 0)))):
            rho, p, n = spearman([c.drift for c in sel], [fn(c) for c in sel])
            out.append(f"| {'all' if x is None else x} | {lab} | {rho:+.3f} | {p:.4f} | {n} |")
    ranked = sorted(rows, key=lambda c: -(g(c, 0) or -1e9))
    top_dec = ranked[:max(1, len(rows) // 10)]
    rest = ranked[len(top_dec):]
    out += ["", f"Mean drift of the top 10 % by task relevance in A: "
            f"{np.mean([c.drift for c in top_dec]):.3f} (n {len(top_dec)}), of the rest: "
            f"{np.mean([c.drift for c in rest]):.3f} (n {len(rest)}).", ""]
    out += top_table(a, rows[:12])
    write_result("finetune_drift.md", out)
    doc = {"args": vars(args), "losses": losses, "loss_texts": losses_ab, "seconds":
           {"finetune": t_ft, "compare": t_cmp},
           "targets": [{"target": c.target, "drift": c.drift, "verdict": c.verdict,
                        "figures": c.figures, "components": c.components,
                        "relevance": [s.relevance for s in c.sides],
                        "synthetic": [None if s.synthetic is None else
                                      {k: s.synthetic[k] for k in ("text", "activation", "xe")}
                                      for s in c.sides]} for c in rows]}
    from featviz.fileio import dump_json
    with open(os.path.join(HERE, "results", "finetune_drift.json"), "w") as f:
        f.write(dump_json(doc))


def top_table(a, rows) -> list[str]:
    out = ["## The most drifted neurons", "",
           "| rank | neuron | verdict | drift | corr | top-k overlap | max A | max B | g A | g B | "
           "A's text in B | B's text in A |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    f = lambda v, p=3: "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.{p}f}"  # noqa: E731
    for i, c in enumerate(rows, 1):
        fi, tr = c.figures, c.figures.get("transfer") or {}
        out.append(f"| {i} | `{c.target}` | {c.verdict} | {f(c.drift)} | {f(fi['corr'])} | "
                   f"{f(fi['overlap'], 2)} | {f(fi['max_a'])} | {f(fi['max_b'])} | "
                   f"{f(c.sides[0].relevance['g'], 2)} | {f(c.sides[1].relevance['g'], 2)} | "
                   f"{f(tr.get('a_in_b'), 2)} | {f(tr.get('b_in_a'), 2)} |")
    out += ["", "Exemplars (top corpus window of each model, context up to the [[peak]] token) "
            "and dreamed texts (each model's best fluent text, its activation in A / in B):", ""]
    for c in rows:
        out.append(f"- `{c.target}` ({c.verdict}, drift {c.drift:.3f})")
        for lab, s in zip("AB", c.sides):
            ex = snippet(a, s.corpus.top[0]) if s.corpus.top else "-"
            syn = s.synthetic
            text = (f"`{json.dumps(syn['text'], ensure_ascii=False)}` "
                    f"({syn['activation'][0]:.2f} / {syn['activation'][1]:.2f})") if syn else "not dreamed"
            out.append(f"  - {lab}: top exemplar `{ex}`; dreamed {text}")
    return out


if __name__ == "__main__":
    main()
