"""Square attack (L-infinity and L2): score-based black-box random search."""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch
from torch import nn

from ._core import _per_sample, attack_loss, check_loss, eval_mode, l2_norm, project_l2

# The paper's schedule of the square size for 10,000 queries: p halves after each of these queries.
# A budget of `queries` rescales query i to i * 10,000 / queries, as the paper does for other budgets.
_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def _p_at(p_init: float, i: int, queries: int) -> float:
    """Fraction of the image a square covers at query ``i`` (piecewise halving, rescaled)."""
    it = int(i / queries * 10000)
    return p_init / 2 ** sum(it > b for b in _HALVINGS)


def _randint(high: int, n: int, generator, device) -> torch.Tensor:
    """``n`` integers uniform in ``[0, high)``, drawn on the generator's device (as ``_rand``)."""
    gen_device = generator.device if generator is not None else device
    return torch.randint(high, (n,), generator=generator, device=gen_device).to(device)


def _signs(shape, generator, device) -> torch.Tensor:
    return 2 * _randint(2, math.prod(shape), generator, device).view(shape).float() - 1


def _window_mask(h: int, w: int, side: int, generator, n: int, device):
    """Per-image random ``side`` x ``side`` window: a bool mask ``(n, 1, h, w)`` and its corners."""
    r0 = _randint(h - side + 1, n, generator, device)
    c0 = _randint(w - side + 1, n, generator, device)
    rows = torch.arange(h, device=device)
    cols = torch.arange(w, device=device)
    in_r = (rows >= r0[:, None]) & (rows < r0[:, None] + side)
    in_c = (cols >= c0[:, None]) & (cols < c0[:, None] + side)
    return (in_r[:, :, None] & in_c[:, None, :])[:, None], r0, c0


def _square(model, x, y, eps, queries, p_init, restarts, loss, generator, init: Callable,
            propose: Callable) -> torch.Tensor:
    check_loss(loss)
    x = x.detach()
    n = x.shape[0]
    with eval_mode(model), torch.no_grad():  # forward passes only: the attack never needs a gradient
        # x itself is judged first, so an image the model already gets wrong is returned unchanged
        logits = model(x)
        best = x.clone()
        best_fooled = logits.argmax(1) != y
        best_loss = attack_loss(logits, y, loss)
        for _ in range(max(1, restarts)):
            idx = (~best_fooled).nonzero().flatten()  # a restart attacks only the images still standing
            if idx.numel() == 0:
                break
            x0, y0 = x[idx], y[idx]
            cur = init(x0, eps, generator)  # query 1
            logits = model(cur)
            cur_loss = attack_loss(logits, y0, loss)
            cur_fooled = logits.argmax(1) != y0
            act = (~cur_fooled).nonzero().flatten()  # images of this restart still being searched
            for i in range(1, queries):
                if act.numel() == 0:
                    break
                cand = propose(cur[act], x0[act], eps, _p_at(p_init, i, queries), generator)
                logits = model(cand)
                c_loss = attack_loss(logits, y0[act], loss)
                c_fooled = logits.argmax(1) != y0[act]
                # random search: keep the candidate if it fools or raises the loss (for the margin loss the
                # two agree: a fooling point has margin > 0, a standing one <= 0)
                take = c_fooled | (c_loss > cur_loss[act])
                cur[act] = torch.where(_per_sample(take, cand), cand, cur[act])
                cur_loss[act] = torch.where(take, c_loss, cur_loss[act])
                cur_fooled[act] = c_fooled & take
                act = act[~cur_fooled[act]]  # a fooled image stops: its first fooling point is kept
            # over restarts: a fooling point beats any other; among equals the higher loss wins
            was = best_fooled[idx]
            take = (cur_fooled & ~was) | ((cur_fooled == was) & (cur_loss > best_loss[idx]))
            best[idx] = torch.where(_per_sample(take, cur), cur, best[idx])
            best_loss[idx] = torch.where(take, cur_loss, best_loss[idx])
            best_fooled[idx] = was | cur_fooled & take
    return best


# --- L-infinity --------------------------------------------------------------------------------

def _linf_init(x, eps, generator):
    # vertical stripes: one random sign per image, channel and column, i.e. every pixel at a corner of
    # the eps-box (clipped to [0, 1]); the paper finds stripes a strong start against standard networks
    n, c, h, w = x.shape
    up = _signs((n, c, 1, w), generator, x.device) > 0
    return torch.where(up, (x + eps).clamp_max(1), (x - eps).clamp_min(0))


def _linf_propose(cur, x, eps, p, generator, tries: int = 10):
    n, c, h, w = x.shape
    side = min(max(int(round(math.sqrt(p * h * w))), 1), max(min(h, w) - 1, 1))
    mask, _, _ = _window_mask(h, w, side, generator, n, x.device)
    lo, hi = (x - eps).clamp_min(0), (x + eps).clamp_max(1)
    up = _signs((n, c, 1, 1), generator, x.device) > 0
    for _ in range(tries):
        # one sign per channel over the whole window; outside it the candidate is exactly the current point
        cand = torch.where(mask, torch.where(up, hi, lo), cur)
        # a window that already holds these signs would waste a query: redraw its signs (as the paper does)
        same = (cand == cur).flatten(1).all(1)
        if not same.any():
            break
        up = torch.where(_per_sample(same, up), _signs((n, c, 1, 1), generator, x.device) > 0, up)
    return cand


def square_linf(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float = 0.3, queries: int = 5000,
                p_init: float = 0.8, restarts: int = 1, loss: str = "margin",
                generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Square attack, L-infinity (Andriushchenko, Croce, Flammarion & Hein, "Square Attack: a
    query-efficient black-box adversarial attack via random search", ECCV 2020).

    Score-based black box: only forward passes (run under ``torch.no_grad()``), so gradient masking
    cannot stop it. Starts from vertical stripes of ``±eps``; each query redraws, per image, one random
    square of side ``round(sqrt(p * H * W))`` with one random sign ``±eps`` per channel, and keeps it if
    the loss rises. ``p`` follows the paper's schedule: ``p_init`` halved after queries 10, 50, 200, 500,
    1000, 2000, 4000, 6000 and 8000 of 10,000, rescaled to ``queries``. Batched: each query is one forward
    pass over the images still standing; an image stops once misclassified (its first fooling point is
    returned), otherwise the highest-loss point found (``x`` itself included) is returned. Images the
    model already misclassifies are returned unchanged.

    Args:
        model: classifier returning logits; run in eval mode, training flags restored after.
        x: ``(N, C, H, W)`` inputs in ``[0, 1]``.
        y: ``(N,)`` int64 true labels.
        eps: L-infinity budget.
        queries: forward passes per image and restart (the stripes start included), plus one on ``x``.
        p_init: initial fraction of the image a square covers. The default 0.8 is the paper's choice for
            MNIST at eps = 0.3 (this book's default threat model); the paper uses 0.05 on ImageNet-scale
            models and 0.3 at CIFAR-10 scale.
        restarts: independent runs, each on the images no earlier run fooled; per image the first fooling
            point is kept, else the highest-loss one.
        loss: one of :data:`~robustness_book.attacks.LOSSES`; the paper's untargeted choice is ``"margin"``.
        generator: optional ``torch.Generator`` making the random search reproducible.

    Returns:
        ``(N, C, H, W)`` detached adversarial images in ``[0, 1]``, ``|x_adv - x| <= eps``.
    """
    return _square(model, x, y, eps, queries, p_init, restarts, loss, generator, _linf_init, _linf_propose)


# --- L2 ----------------------------------------------------------------------------------------

def _bump(rows: int, cols: int, device) -> torch.Tensor:
    """The paper's centred pseudo-Gaussian bump (its eq. 2): concentric rectangles around the centre,
    ring ``d`` (Chebyshev distance) holding ``sum_{k=0}^{m-d} 1 / (m + 1 - k)^2`` with ``m = max(rows, cols) // 2``."""
    m = max(rows, cols) // 2
    r = torch.arange(rows, device=device)[:, None] - rows // 2
    c = torch.arange(cols, device=device)[None, :] - cols // 2
    depth = m - torch.maximum(r.abs(), c.abs())  # m at the centre, 0 on the outermost ring
    terms = 1.0 / (m + 1 - torch.arange(m + 1, device=device, dtype=torch.float32)) ** 2
    cum = torch.cumsum(terms, 0)  # cum[d] = sum_{k=0}^{d} terms[k]
    return cum[depth.clamp_min(0)] * (depth >= 0)


def _pattern(side: int, device) -> torch.Tensor:
    """A ``side`` x ``side`` window: a positive bump over the top half, a negative one over the bottom
    half (the paper's L2 update shape), unit L2 norm."""
    top = side // 2
    eta = torch.cat([_bump(top, side, device), -_bump(side - top, side, device)], 0)
    return eta / eta.norm().clamp_min(1e-12)


def _l2_init(x, eps, generator):
    # a grid of tiles, each holding the two-bump pattern with a random sign per image and channel,
    # rescaled to norm eps (clipping to [0, 1] then only shrinks it)
    n, c, h, w = x.shape
    t = max(min(h, w) // 5, 1)
    th, tw = h // t, w // t
    r0, c0 = (h - th * t) // 2, (w - tw * t) // 2
    signs = _signs((n, c, th, tw), generator, x.device)
    tiles = signs.repeat_interleave(t, 2).repeat_interleave(t, 3) * _pattern(t, x.device).repeat(th, tw)
    delta = torch.zeros_like(x)
    delta[:, :, r0:r0 + th * t, c0:c0 + tw * t] = tiles
    delta = delta * _per_sample(eps / l2_norm(delta).clamp_min(1e-12), delta)
    return (x + project_l2(delta, eps)).clamp(0, 1)


def _l2_propose(cur, x, eps, p, generator):
    # the paper's L2 step: the perturbation's mass in two random windows W1, W2 (plus any unused budget)
    # moves into W1, reshaped toward a fresh random bump pattern; W2 is emptied. Before clipping the
    # norm is then exactly eps: the rest of the image is untouched and W1 carries all the mass it took.
    n, c, h, w = x.shape
    side = int(round(math.sqrt(p * h * w)))
    side = max(side, 3) | 1  # odd and >= 3, so the pattern has a centre (as in the paper's code)
    side = min(side, h, w)
    nu = cur - x
    m1, r1, c1 = _window_mask(h, w, side, generator, n, x.device)
    m2, _, _ = _window_mask(h, w, side, generator, n, x.device)
    # the pattern at W1, randomly transposed per image, with a random sign per channel
    eta = _pattern(side, x.device).expand(n, side, side)
    flip = _randint(2, n, generator, x.device).bool()
    eta = torch.where(flip[:, None, None], eta.transpose(1, 2), eta)
    canvas = torch.zeros(n, 1, h, w, device=x.device, dtype=x.dtype)
    span = torch.arange(side, device=x.device)
    rows, cols = (r1[:, None] + span)[:, :, None], (c1[:, None] + span)[:, None, :]
    canvas[torch.arange(n, device=x.device)[:, None, None], 0, rows, cols] = eta.to(x.dtype)
    rho = _signs((n, c, 1, 1), generator, x.device).to(x.dtype)

    def chan_norm(t):  # per image and channel, (n, c, 1, 1)
        return t.pow(2).sum((2, 3), keepdim=True).sqrt()

    unused = (eps ** 2 - l2_norm(nu) ** 2).clamp_min(0)
    nu_w1 = nu * m1
    direction = rho * canvas + nu_w1 / chan_norm(nu_w1).clamp_min(1e-12)
    both = m1 | m2
    avail = (chan_norm(nu * both) ** 2 + _per_sample(unused, nu) / c).sqrt()
    new = nu * ~both + direction / chan_norm(direction).clamp_min(1e-12) * avail
    # rounding aside the norm is eps already; the projection makes the bound exact, the clip only shrinks it
    return (x + project_l2(new, eps)).clamp(0, 1)


def square_l2(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float = 2.0, queries: int = 5000,
              p_init: float = 0.1, restarts: int = 1, loss: str = "margin",
              generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Square attack, L2 (Andriushchenko, Croce, Flammarion & Hein, "Square Attack: a
    query-efficient black-box adversarial attack via random search", ECCV 2020).

    Score-based black box: only forward passes (run under ``torch.no_grad()``). Starts from a grid of
    tiles, each a pair of opposite-sign pseudo-Gaussian bumps with a random sign per channel, scaled to
    L2 norm ``eps``. Each query picks, per image, two random windows of side ``round(sqrt(p * H * W))``
    (at least 3, odd): the perturbation in both, plus the budget the clipping left unused, is moved into
    the first, toward a fresh randomly signed and oriented bump pair; the second is emptied. The result is
    projected onto the eps-ball and clipped to ``[0, 1]`` and kept if the loss rises. ``p`` follows the
    paper's piecewise-halving schedule, rescaled to ``queries`` (see :func:`square_linf`). Batched: each
    query is one forward pass over the images still standing; an image stops once misclassified (its first
    fooling point is returned), otherwise the highest-loss point found (``x`` itself included) is
    returned. Images the model already misclassifies are returned unchanged.

    Args:
        model: classifier returning logits; run in eval mode, training flags restored after.
        x: ``(N, C, H, W)`` inputs in ``[0, 1]``.
        y: ``(N,)`` int64 true labels.
        eps: per-sample L2 budget.
        queries: forward passes per image and restart (the start included), plus one on ``x``.
        p_init: initial fraction of the image a window covers; 0.1 is the paper's L2 setting.
        restarts, loss, generator: as in :func:`square_linf`.

    Returns:
        ``(N, C, H, W)`` detached adversarial images in ``[0, 1]``, ``||x_adv - x||_2 <= eps``.
    """
    return _square(model, x, y, eps, queries, p_init, restarts, loss, generator, _l2_init, _l2_propose)
