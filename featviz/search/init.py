"""Where a search starts: the model's own samples, random readable tokens, or corpus windows."""
from __future__ import annotations

import torch


def init_ids(handle, cfg, tokens, mask, gen, batch):
    if cfg.start.init == "model":
        return sample_from_model(handle, batch, cfg.length, mask, gen, tokens.prefix)
    if cfg.start.init == "corpus":
        rows = torch.tensor([list(r)[: cfg.length] for r in cfg.start.corpus_init], dtype=torch.long)
        return rows[torch.arange(batch) % len(rows)].to(handle.device)
    allowed = mask.nonzero().flatten()
    return allowed[torch.randint(0, len(allowed), (batch, cfg.length), generator=gen,
                                 device=gen.device)]


def sample_from_model(handle, batch: int, n: int, mask: torch.Tensor,
                      generator: torch.Generator, prefix_ids: list[int] = (),
                      temperature_: float = 1.0) -> torch.Tensor:
    """Ancestral samples of n readable tokens after BOS + prefix: where the model itself goes."""
    return sample_many(handle, [(batch, generator)], n, mask, prefix_ids, temperature_)[0]


def sample_many(handle, jobs, n: int, mask: torch.Tensor, prefix_ids: list[int] = (),
                temperature_: float = 1.0) -> list[torch.Tensor]:
    """``sample_from_model`` for several jobs ``(batch, generator)`` at once: one forward
    per token for all jobs' rows, each job's rows drawn from its own generator (so each
    gets what it would get alone).  Returns one (batch, n) tensor per job."""
    sizes = [b for b, _ in jobs]
    ids = torch.tensor([[handle.bos_id, *prefix_ids]] * sum(sizes), device=handle.device)
    bias = torch.where(mask, 0.0, float("-inf"))
    from featviz.model.kvcache import cache_kw
    name = cache_kw(handle.model)   # "cache" on transformers >= 5.2x, else "past_key_values"
    past, step_ids = None, ids
    with torch.no_grad():
        for _ in range(n):
            out = handle.model(input_ids=step_ids, use_cache=True, **{name: past})
            past = out[name]
            p = torch.softmax(out.logits[:, -1].float() / temperature_ + bias, -1)
            step_ids = torch.cat([torch.multinomial(part, 1, generator=g)
                                  for part, (_, g) in zip(p.split(sizes), jobs)])
            ids = torch.cat([ids, step_ids], 1)
    return list(ids[:, 1 + len(prefix_ids):].split(sizes))
