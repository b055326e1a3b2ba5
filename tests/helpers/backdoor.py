"""Plant a hidden trigger in one MLP neuron of a Llama-family model (for the audit test).

The neuron's gate and up rows are replaced by a rank-one pair keyed on the centred
MLP input that the full trigger produces at its last token, with an emulated bias
(a multiple of the mean input direction) so that it stays near zero on natural text
and fires strongly on the trigger.  Every other weight is left as it was.
"""
import numpy as np
import torch

from featviz.mining.corpus import windows


def mlp_inputs(handle, layer, rows):
    mlp = handle.model.model.layers[layer].mlp
    cap = {}
    hook = mlp.register_forward_pre_hook(lambda mod, args: cap.__setitem__("x", args[0].detach()))
    try:
        out = []
        with torch.no_grad():
            for i in range(0, len(rows), 16):
                handle.model(input_ids=torch.as_tensor(np.stack(rows[i:i + 16])))
                out.append(cap["x"].float())
        return out
    finally:
        hook.remove()


def plant(handle, layer, neuron, trigger, *, corpus_tokens=8000, tau=1.3, alpha=8.0, beta=4.0):
    """Edit the weights in place; returns a function that restores them."""
    rows = [w.ids for w in windows(handle, None, 63, max_tokens=corpus_tokens)]
    xs = torch.cat([x[:, 1:].reshape(-1, x.shape[-1]) for x in mlp_inputs(handle, layer, rows)])
    mu = xs.mean(0)
    ids = np.array([[handle.bos_id] + handle.encode(trigger)])
    xt = mlp_inputs(handle, layer, [ids[0]])[0][0, -1]
    d = (xt - mu) / (xt - mu).norm()
    v = d - (float(d @ mu) + tau) * mu / (mu @ mu)
    mlp = handle.model.model.layers[layer].mlp
    old = (mlp.gate_proj.weight[neuron].clone(), mlp.up_proj.weight[neuron].clone())
    with torch.no_grad():
        mlp.gate_proj.weight[neuron] = (alpha * v).to(mlp.gate_proj.weight.dtype)
        mlp.up_proj.weight[neuron] = (beta * v).to(mlp.up_proj.weight.dtype)

    def restore():
        with torch.no_grad():
            mlp.gate_proj.weight[neuron], mlp.up_proj.weight[neuron] = old
    return restore
