"""Head diversity: gauge-invariant PCA of each head's bilinear logit form A_h = W_Q,hᵀ W_K,h.

A rotation applied to both W_Q,h and W_K,h changes the weights but not A_h, so comparing A_h (not raw
weights) measures what heads compute. Per layer: the Gram matrix G_ij = ⟨A_i, A_j⟩_F, centred
(kernel PCA), then the entropy effective rank exp(H(λ/Σλ)) of its spectrum. With H heads the centred
Gram has rank at most H − 1, so `fraction` = effective rank / (H − 1): 1 when heads spread evenly,
→ 0 when all heads compute the same form (MQA without query specialisation would be an example).
"""
from __future__ import annotations

import torch


def effective_rank(w_q: torch.Tensor, w_k: torch.Tensor) -> float:
    """Entropy effective rank of the centred Gram of A_h = w_q[h]ᵀ w_k[h]; w_q, w_k are (H, dh, d)."""
    w_q, w_k = (w.detach().to("cpu", torch.float64) for w in (w_q, w_k))  # tiny: the CPU in fp64 is exact enough
    H = w_q.size(0)
    if H < 2:
        return 0.0
    # ⟨A_i, A_j⟩_F = Σ (W_Q,i W_Q,jᵀ) ∘ (W_K,i W_K,jᵀ): dh×dh products instead of d×d forms.
    qq = torch.einsum("iam,jbm->ijab", w_q, w_q)
    kk = torch.einsum("iam,jbm->ijab", w_k, w_k)
    gram = (qq * kk).sum(dim=(-1, -2))
    centre = torch.eye(H, dtype=gram.dtype) - 1.0 / H
    eig = torch.linalg.eigvalsh(centre @ gram @ centre).clamp_min(0)
    if eig.sum() <= 1e-12 * gram.trace():  # heads identical up to rounding: no spread
        return 0.0
    p = eig / eig.sum()
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def head_diversity(attention_layers) -> dict[str, float]:
    """Mean effective rank over layers, and the same as a fraction of its maximum (H − 1)."""
    ranks, fracs = [], []
    for layer in attention_layers:
        w_q, w_k = layer.bilinear_factors()
        r = effective_rank(w_q, w_k)
        ranks.append(r)
        fracs.append(r / max(w_q.size(0) - 1, 1))
    return {"head_eff_rank": sum(ranks) / len(ranks), "head_eff_rank_frac": sum(fracs) / len(fracs)}
