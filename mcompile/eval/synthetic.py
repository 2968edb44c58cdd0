"""The benchmarks' synthetic models: LLaMA-shaped (``SHAPES``), random weights built on the device
from a ``LlamaConfig`` (no download), with q/k biases so that an init can give them a local
attention profile (``apply_init(model, "locality", ...)``, see :func:`locality_bias`) and MLPs
that can run on slices of the sequence (:func:`chunk_mlps`) so that a million tokens fit.
benchmarks/prefill.py and its companions time them.
"""
from __future__ import annotations

import math
import types

import torch
import transformers

LLAMA3_8B = dict(hidden_size=4096, intermediate_size=14336, num_attention_heads=32, num_key_value_heads=8,
                 head_dim=128, vocab_size=128256, rope_theta=500000.0, max_position_embeddings=1 << 21)
SHAPES = {
    "llama3-8b": LLAMA3_8B,
    # CPU checks of the locality construction: the 8B width, head dim, RoPE and init, few heads, small MLP
    "llama3-8b-narrow": dict(LLAMA3_8B, num_attention_heads=4, num_key_value_heads=1, intermediate_size=512,
                             vocab_size=8192),
    "tiny": dict(hidden_size=128, intermediate_size=256, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                 vocab_size=256, rope_theta=500000.0, max_position_embeddings=1 << 16),
}
LOCALITY_DEFAULTS = {"alpha": 1.5, "near": 128.0, "far": 1.0e6, "qk_scale": 0.7}


def build_model(layers: int, shape: str, device: str, dtype: torch.dtype):
    cfg = transformers.LlamaConfig(num_hidden_layers=layers, attention_bias=True, **SHAPES[shape])
    torch.manual_seed(0)
    with torch.device(device):
        model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=dtype, attn_implementation="sdpa")
    model.eval()
    # the random q/k weights, kept on the CPU (out of the GPU's peak memory) to switch inits in place
    model._qk_weights = [(lin, lin.weight.detach().to("cpu", copy=True)) for layer in model.model.layers
                         for lin in (layer.self_attn.q_proj, layer.self_attn.k_proj)]
    return model


def locality_bias(model, alpha: float, near: float, far: float) -> tuple[torch.Tensor, dict]:
    """The shared q/k bias vector (head_dim,) and a description of it.

    Every q and k head gets the same bias ``b`` (before RoPE), ``b_f = b_{f+D/2} = a`` on the RoPE
    pairs whose frequency theta_f lies in ``[1/far, 1/near]``, 0 elsewhere. The bias-bias logit term
    ``scale * sum_f 2 a^2 cos(theta_f (i-j))`` then decays about linearly in ``ln|i-j|`` (each
    frequency stops contributing once ``theta_f |i-j| > 1``), i.e. attention ~ ``|i-j|^-alpha`` for
    ``near < |i-j| < far``. Frequencies above ``1/near`` are left out because their incoherent sum
    at large distances adds ripple that makes the vertical-slash estimate pick scattered far
    diagonals.
    """
    inv_freq = model.model.rotary_emb.inv_freq.double().cpu()          # theta_f, f = 0 .. D/2 - 1
    d = model.config.head_dim
    band = (inv_freq >= 1.0 / far) & (inv_freq <= 1.0 / near)
    per_ln = 1.0 / float(torch.log(inv_freq[0] / inv_freq[1]))        # frequencies per unit of ln(theta)
    a = math.sqrt(alpha * math.sqrt(d) / (2 * per_ln))               # slope d(logit)/d ln|i-j| = -alpha
    b = torch.zeros(d, dtype=torch.float64)
    b[: d // 2][band] = a
    b[d // 2:][band] = a
    thetas = inv_freq[band]
    return b, {"amplitude": a, "pairs": int(band.sum()), "theta_range": [float(thetas.min()), float(thetas.max())],
               "norm": float(b.norm()), "frequencies_per_ln": per_ln}


def apply_init(model, init: str, params: dict) -> dict:
    """Set the attention biases (and q/k weight scale) in place: no recompilation, same shapes."""
    d = model.config.head_dim
    desc: dict = {"name": init}
    if init == "random":
        b, qk_scale = torch.zeros(d, dtype=torch.float64), 1.0
        desc["construction"] = "transformers' random init (normal, std 0.02); q/k/v/o biases zero"
    elif init == "locality":
        b, info = locality_bias(model, params["alpha"], params["near"], params["far"])
        qk_scale = params["qk_scale"]
        desc.update(params=dict(params), bias=info, construction=(
            "random init; q_proj.bias and k_proj.bias of every head = b (before RoPE), b_f = b_{f+D/2} = a on the "
            "RoPE pairs with theta_f in [1/far, 1/near], 0 elsewhere; the bias-bias logit term "
            "scale*sum_f 2a^2 cos(theta_f (i-j)) decays by alpha per unit of ln|i-j| (attention ~ |i-j|^-alpha "
            "for near < |i-j| < far); q_proj/k_proj weights scaled by qk_scale; no attention sink"))
    else:
        raise ValueError(f"unknown init {init!r}")
    with torch.no_grad():
        for lin, w0 in model._qk_weights:
            lin.weight.copy_(w0 * qk_scale if qk_scale != 1.0 else w0)
        for layer in model.model.layers:
            at = layer.self_attn
            at.q_proj.bias.copy_(b.to(at.q_proj.bias.dtype).repeat(at.q_proj.bias.numel() // d))
            at.k_proj.bias.copy_(b.to(at.k_proj.bias.dtype).repeat(at.k_proj.bias.numel() // d))
    return desc


def chunk_mlps(model, pieces: int) -> None:
    """Each decoder layer's MLP applied to ``pieces`` slices of the sequence (the same function)."""
    def forward(self, x):
        return torch.cat([self._unchunked_forward(p) for p in torch.tensor_split(x, pieces, dim=1)], dim=1)

    for layer in model.model.layers:
        layer.mlp._unchunked_forward = layer.mlp.forward
        layer.mlp.forward = types.MethodType(forward, layer.mlp)
