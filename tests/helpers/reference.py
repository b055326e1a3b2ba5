"""Independent re-implementations of one transformer block from the raw weights.

Used to check that featviz's hooks read what they claim; nothing here imports featviz.
"""
import math

import torch
import torch.nn.functional as F


def _rope(x, positions, theta):
    d = x.shape[-1]
    inv = 1.0 / (theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
    ang = positions[:, None].double() * inv[None]
    cos = torch.cat([ang.cos(), ang.cos()], -1).float()
    sin = torch.cat([ang.sin(), ang.sin()], -1).float()
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    rot = torch.cat([-x2, x1], -1)
    return x * cos + rot * sin


def _rms(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def _attend(q, k, v):
    # q, k, v: (heads, T, dh)
    t = q.shape[1]
    s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    s = s.masked_fill(torch.triu(torch.ones(t, t, dtype=torch.bool), 1), float("-inf"))
    p = s.softmax(-1)
    return p, p @ v


def llama_block(model, layer, h):
    """h: (T, d) input of block `layer`. Returns dict of z, pattern, mlp_post, resid_post."""
    cfg = model.config
    blk = model.model.layers[layer]
    nh, nkv = cfg.num_attention_heads, cfg.num_key_value_heads
    dh = cfg.hidden_size // nh
    theta = (getattr(cfg, "rope_parameters", None) or {}).get("rope_theta", None) or cfg.rope_theta
    t = h.shape[0]
    a = _rms(h, blk.input_layernorm.weight, cfg.rms_norm_eps)
    q = (a @ blk.self_attn.q_proj.weight.T).view(t, nh, dh).transpose(0, 1)
    k = (a @ blk.self_attn.k_proj.weight.T).view(t, nkv, dh).transpose(0, 1)
    v = (a @ blk.self_attn.v_proj.weight.T).view(t, nkv, dh).transpose(0, 1)
    pos = torch.arange(t)
    q, k = _rope(q, pos, theta), _rope(k, pos, theta)
    rep = nh // nkv
    k, v = k.repeat_interleave(rep, 0), v.repeat_interleave(rep, 0)
    p, z = _attend(q, k, v)
    z = z.transpose(0, 1)                                    # (T, nh, dh)
    h2 = h + z.reshape(t, -1) @ blk.self_attn.o_proj.weight.T
    m = _rms(h2, blk.post_attention_layernorm.weight, cfg.rms_norm_eps)
    post = F.silu(m @ blk.mlp.gate_proj.weight.T) * (m @ blk.mlp.up_proj.weight.T)
    out = h2 + post @ blk.mlp.down_proj.weight.T
    return {"z": z, "pattern": p, "mlp_post": post, "resid_post": out}


def gpt2_block(model, layer, h):
    cfg = model.config
    blk = model.transformer.h[layer]
    nh = cfg.n_head
    dh = cfg.n_embd // nh
    t = h.shape[0]
    a = F.layer_norm(h, (cfg.n_embd,), blk.ln_1.weight, blk.ln_1.bias, cfg.layer_norm_epsilon)
    qkv = a @ blk.attn.c_attn.weight + blk.attn.c_attn.bias
    q, k, v = qkv.split(cfg.n_embd, -1)
    q, k, v = (x.view(t, nh, dh).transpose(0, 1) for x in (q, k, v))
    p, z = _attend(q, k, v)
    z = z.transpose(0, 1)
    h2 = h + z.reshape(t, -1) @ blk.attn.c_proj.weight + blk.attn.c_proj.bias
    m = F.layer_norm(h2, (cfg.n_embd,), blk.ln_2.weight, blk.ln_2.bias, cfg.layer_norm_epsilon)
    pre = m @ blk.mlp.c_fc.weight + blk.mlp.c_fc.bias
    post = 0.5 * pre * (1 + torch.tanh(math.sqrt(2 / math.pi) * (pre + 0.044715 * pre ** 3)))
    out = h2 + post @ blk.mlp.c_proj.weight + blk.mlp.c_proj.bias
    return {"z": z, "pattern": p, "mlp_post": post, "resid_post": out}


def block_inputs(model, ids):
    """Hidden states entering each block (HF's hidden_states[L])."""
    with torch.no_grad():
        out = model(input_ids=ids[None], output_hidden_states=True)
    return [h[0] for h in out.hidden_states]


def reference(handle, layer, ids):
    hs = block_inputs(handle.model, ids)
    fn = llama_block if handle.arch == "llama" else gpt2_block
    with torch.no_grad():
        return fn(handle.model, layer, hs[layer])
