"""The pure-PyTorch backend: token chunks of logits, never more than one [chunk x V] block.

Correct on any device and the CPU fallback. Numerics: the lm_head matmul runs in the input
dtype (fp32 accumulation inside BLAS / cuBLAS), everything after it (max, log-sum-exp,
softmax, gradients of the logits) in fp32. dWeight is accumulated across chunks in fp32
when the weight is half precision, since summing many bf16 partial products would round
at every chunk.

Memory per chunk: the fp32 logits block plus one fp32 probability block (the second only
when entropy is requested or in the logprob backward).
"""

from __future__ import annotations

import torch

from rgpo_fast.algos.policy_loss import NUM_STATS, LossConfig, TokenTerms, token_loss_and_grad

NAME = "torch"
TRUNCATION = True  # takes per-row thresholds of a truncated sampler (ops/truncation.py)
ROUNDED_LOGITS = True  # 16-bit matmul output rounded to the input dtype (_logits_block)
# Where a truncated sampler drops a token, its logit is replaced by (row max - DROPPED):
# exp(-1e4) is 0 in fp32, and unlike -inf the product 0 * logit stays 0 in the entropy.
DROPPED = 1.0e4
# Rows per chunk: one fp32 logits block of at most ~96 MiB (24M elements), rounded down to
# a multiple of 64 rows (BLAS blocking favours multiples of 64; each chunk re-reads the
# whole weight); the chunk measurements are in docs/csrc.md with their command.
BLOCK_ELEMENTS = 24 * 2**20
ROW_MULTIPLE = 64


def auto_chunk_size(n_tokens: int, vocab: int) -> int:
    rows = BLOCK_ELEMENTS // max(vocab, 1)
    rows = max(16, rows - rows % ROW_MULTIPLE if rows >= ROW_MULTIPLE else rows)
    return max(1, min(n_tokens, rows))


def is_available(device: torch.device) -> bool:
    return True


def _logits_block(h, weight, bias, temperature):
    """(c, V) fp32 logits of one chunk of hidden states; a fresh tensor safe to modify."""
    if h.dtype == torch.float32:
        z = torch.addmm(bias, h, weight.t()) if bias is not None else h @ weight.t()
    else:
        # Half inputs: one rounding of the matmul output to the input dtype (as a cuBLAS
        # kernel with a half output would do), then the bias is added in fp32.
        z = (h @ weight.t()).float()
        if bias is not None:
            z += bias.float()
    if temperature != 1.0:
        z.div_(temperature)
    return z


def _row_ids(c: int, device) -> torch.Tensor:
    return torch.arange(c, device=device)


def _dropped(z, threshold, targets):
    """(c, V) bool: logits below their row's threshold, the target never (ops/truncation.py)."""
    drop = z < threshold[:, None]
    drop[_row_ids(z.shape[0], z.device), targets] = False
    return drop


def logprob_forward(hidden, weight, bias, targets, temperature, with_entropy, chunk_size=None,
                    threshold=None):
    """(N, H), (V, H), (V,)|None, (N,) -> logp (N,), lse (N,), entropy (N,)|None, all fp32.
    `threshold` (N,) fp32: per row, the smallest logit / T a truncated sampler keeps (the
    target is always kept); the softmax is then over the kept logits only."""
    N, V = hidden.shape[0], weight.shape[0]
    c = chunk_size or auto_chunk_size(N, V)
    logp = hidden.new_empty(N, dtype=torch.float32)
    lse = torch.empty_like(logp)
    ent = torch.empty_like(logp) if with_entropy else None
    for s in range(0, N, c):
        e = min(s + c, N)
        z = _logits_block(hidden[s:e], weight, bias, temperature)  # (c, V)
        m = z.amax(dim=-1, keepdim=True)  # the row's top logit is always kept
        z.sub_(m)  # z - max: exp cannot overflow
        if threshold is not None:
            z.masked_fill_(_dropped(z, threshold[s:e] - m.squeeze(1), targets[s:e]), -DROPPED)
        zt = z.gather(1, targets[s:e, None]).squeeze(1)
        if with_entropy:
            p = torch.exp(z)  # unnormalised probabilities; z (= logit - max) is still needed
            se = p.sum(-1)
            # H = log(se) - sum_k p_k (z_k - m) / se; the row dot product as a batched
            # (1 x V) @ (V x 1) matmul avoids a third (c, V) temporary.
            pz = torch.bmm(p.unsqueeze(1), z.unsqueeze(2)).view(-1)
            ent[s:e] = torch.log(se) - pz / se
        else:
            se = z.exp_().sum(-1)
        lse[s:e] = m.squeeze(1) + torch.log(se)
        logp[s:e] = zt - torch.log(se)
        del z
    return logp, lse, ent


def _softmax_grad_block(z, lse, targets, g_logp, g_ent, ent, threshold=None):
    """In place: turn logits z (c, V) into d(loss)/d(z) given upstream token gradients.

    d logp_t / dz_k = 1[k = t] - p_k;  d H / dz_k = -p_k (log p_k + H); a logit a
    truncated sampler drops has p_k = 0 and no gradient.
    """
    drop = _dropped(z, threshold, targets) if threshold is not None else None
    z.sub_(lse[:, None])  # log p
    if drop is not None:
        z.masked_fill_(drop, -DROPPED)  # p = 0, and 0 (log p + H) = 0 in the entropy term
    if g_ent is not None:
        p = torch.exp(z)
        z.add_(ent[:, None]).mul_(p).mul_(-g_ent[:, None])  # -g_H p (log p + H)
        z.addcmul_(p, g_logp[:, None], value=-1.0)  # - g_l p
        del p
    else:
        z.exp_().mul_(-g_logp[:, None])  # - g_l p
    rows = _row_ids(z.shape[0], z.device)
    z[rows, targets] += g_logp  # + g_l at the target
    return z


def _grad_buffers(hidden, weight, bias, needs):
    need_h, need_w, need_b = needs
    acc = torch.float32 if weight.dtype != torch.float32 else weight.dtype
    dh = torch.empty_like(hidden) if need_h else None
    dw = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_w else None
    db = torch.zeros(weight.shape[0], dtype=torch.float32, device=weight.device) if need_b else None
    return dh, dw, db


def _accumulate(dz, h, weight, temperature, dh, dw, db, s, e):
    """Chain d(loss)/dz of one chunk through z = (h W^T + b) / T: 2 matmuls."""
    if temperature != 1.0:
        dz.div_(temperature)
    if db is not None:
        db += dz.sum(0)
    dzc = dz.to(h.dtype) if dz.dtype != h.dtype else dz
    if dh is not None:
        torch.mm(dzc, weight, out=dh[s:e])
    if dw is not None:
        if dw.dtype == dzc.dtype:
            dw.addmm_(dzc.t(), h)
        else:
            dw += (dzc.t() @ h).float()


def _finish(dh, dw, db, weight, bias):
    if dw is not None and dw.dtype != weight.dtype:
        dw = dw.to(weight.dtype)
    if db is not None and bias is not None:
        db = db.to(bias.dtype)
    return dh, dw, db


def logprob_backward(
    hidden,
    weight,
    bias,
    targets,
    lse,
    entropy,
    temperature,
    g_logp,
    g_ent,
    needs,
    chunk_size=None,
    threshold=None,
):
    """Recompute each logits chunk and chain the token gradients: (dh, dw, db)."""
    N, V = hidden.shape[0], weight.shape[0]
    c = chunk_size or auto_chunk_size(N, V)
    dh, dw, db = _grad_buffers(hidden, weight, bias, needs)
    for s in range(0, N, c):
        e = min(s + c, N)
        z = _logits_block(hidden[s:e], weight, bias, temperature)
        ge = g_ent[s:e] if g_ent is not None else None
        en = entropy[s:e] if entropy is not None else None
        thr = threshold[s:e] if threshold is not None else None
        dz = _softmax_grad_block(z, lse[s:e], targets[s:e], g_logp[s:e], ge, en, thr)
        _accumulate(dz, hidden[s:e], weight, temperature, dh, dw, db, s, e)
        del z, dz
    return _finish(dh, dw, db, weight, bias)


def policy_loss_forward_backward(
    hidden,
    weight,
    bias,
    targets,
    terms: TokenTerms,
    cfg: LossConfig,
    needs,
    with_entropy=False,
    chunk_size=None,
):
    """Loss, stats and all gradients in ONE sweep of 3 matmuls per chunk.

    Possible because each token's loss depends on its own logp only (aggregation is folded
    into detached weights), so d(loss)/d(logp) is known as soon as the chunk's logp is.
    """
    N, V = hidden.shape[0], weight.shape[0]
    c = chunk_size or auto_chunk_size(N, V)
    grad = any(needs)
    dh, dw, db = _grad_buffers(hidden, weight, bias, needs)
    loss = hidden.new_zeros((), dtype=torch.float32)
    stats = hidden.new_zeros(NUM_STATS, dtype=torch.float32)
    for s in range(0, N, c):
        e = min(s + c, N)
        h = hidden[s:e]
        t = targets[s:e]
        z = _logits_block(h, weight, bias, temperature=cfg.temperature)  # (c, V)
        m = z.amax(dim=-1)
        z.sub_(m[:, None])
        zt = z.gather(1, t[:, None]).squeeze(1)
        z.exp_()  # z is now exp(logit - max): unnormalised probabilities
        se = z.sum(-1)
        log_se = torch.log(se)
        logp = zt - log_se
        ent = None
        if with_entropy:
            # sum_k p_k log p_k = sum_k e_k (zk - m) / se - log se; (zk - m) = log(e_k).
            # log(e_k) of a tiny e_k is -inf but e_k * log e_k -> 0, so use xlogy.
            ent = log_se - torch.special.xlogy(z, z).sum(-1) / se
        loss_t, g, st = token_loss_and_grad(logp, terms.slice(s, e), cfg, ent)
        loss += loss_t.sum()
        stats += st
        if grad:
            z.mul_((-g / se)[:, None])  # -g p_k
            z[_row_ids(e - s, z.device), t] += g
            _accumulate(z, h, weight, cfg.temperature, dh, dw, db, s, e)
        # Free this block before the next matmul allocates one: never two alive at once.
        del z
    dh, dw, db = _finish(dh, dw, db, weight, bias)
    return loss, stats, dh, dw, db
