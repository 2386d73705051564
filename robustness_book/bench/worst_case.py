"""``--worst-case``: the toolkit's adaptive worst case (the default ensemble, or ``--members``) beside AutoAttack
(standard) on the first ``--n`` test images of chapter 1's model (or, with ``--jumprelu KAPPA``, of that model
retrofitted with JumpReLU: a defended network), at each ``--eps``: robust accuracy, 95% Wilson interval, seconds."""
from __future__ import annotations

import torch
from torch import nn

from .. import evaluate
from ..chapters import baselines, get_chapter
from ..config import resolve
from ..data import load_dataset
from ..defenses.jumprelu import bpda_relu, retrofit
from ..evaluate.members import DEFAULT_TARGETS
from ..timing import timed
from ._common import provenance


def worst_case_vs_autoattack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps_list, norm: str = "linf",
                             steps: int = 100, restarts: int = 1, queries: int = 5000, batch_size: int = 256,
                             seed: int = 0, members: list[str] | None = None,
                             targets: int = DEFAULT_TARGETS, first: list | None = None) -> list[dict]:
    """Per eps: the toolkit's worst case over the default members (or ``members`` by name, after the built
    members ``first``: e.g. a BPDA member) and AutoAttack (standard), each with its
    robust accuracy, 95% Wilson interval and seconds (the worst case's also per member: where its time goes);
    printed as it goes and returned."""
    members = [*(first or []), *(evaluate.members_from_names(members, steps, restarts, queries, targets) if members
                                 else evaluate.default_members(steps, restarts, queries, targets))]
    rows = []
    print(f"worst case ({', '.join(m.name for m in members)}; PGD {steps} steps × {restarts} restart(s), "
          f"Square {queries} queries) vs AutoAttack standard, {norm}, {len(y)} images")
    for eps in eps_list:
        wc, wc_seconds = timed(evaluate.worst_case, model, x, y, eps, members, norm=norm,
                               batch_size=batch_size, seed=seed)
        aa = evaluate.autoattack_accuracy(model, x, y, eps, norm=norm, batch_size=batch_size, seed=seed)
        row = {"eps": eps, "clean": wc["clean"], "worst_case": evaluate.to_record(wc), "worst_case_seconds": wc_seconds,
               "member_seconds": {k: round(v, 2) for k, v in wc["seconds"].items()}, "autoattack": aa}
        rows.append(row)
        added = ", ".join(f"{k} +{v} in {wc['seconds'][k]:.1f} s" for k, v in wc["added"].items())
        print(f"eps {eps:<7g} clean {wc['clean']:6.1%} | worst case {wc['robust']:6.1%} "
              f"[{wc['interval'][0]:.1%}, {wc['interval'][1]:.1%}] {wc_seconds:8.1f} s ({added}) | "
              f"AutoAttack {aa['robust']:6.1%} [{aa['interval'][0]:.1%}, {aa['interval'][1]:.1%}] "
              f"{aa['seconds']:8.1f} s")
    return rows


def run_worst_case(profile: str = "smoke", n: int = 300, eps: list[float] | None = None, norm: str = "linf",
                   steps: int = 100, queries: int = 5000, batch_size: int = 256, members: list[str] | None = None,
                   targets: int = DEFAULT_TARGETS, jumprelu: float | None = None, bpda: str | None = None) -> dict:
    """The ``--worst-case`` mode: :func:`worst_case_vs_autoattack` on chapter 1's model of ``profile`` and its first
    ``n`` test images, at each of ``eps`` (default: the chapter's eps); printed as it goes and returned as JSON
    content. ``jumprelu``: score the model retrofitted with JumpReLU at that threshold instead; ``bpda`` (a loss,
    with ``jumprelu``): put PGD through the retrofit's BPDA copy (the JumpReLU chapter's adaptive member: the
    jump's backward replaced by ReLU's) first in the ensemble."""
    cfg = resolve(get_chapter("baselines"), profile=profile)
    model, _ = baselines.train_model(cfg)  # the chapter's own recipe, so the cache holds one model, not two
    if bpda is not None and jumprelu is None:
        raise ValueError("bpda needs jumprelu: the BPDA copy is the JumpReLU retrofit's")
    first = []
    if jumprelu is not None:
        model = retrofit(model, jumprelu)
        if bpda is not None:
            first = [evaluate.members.bpda(bpda_relu(model), loss=bpda, steps=steps)]
    device = next(model.parameters()).device
    model.eval()
    test = load_dataset(cfg.dataset, "test").first(n)
    eps_list = eps if eps else [cfg.eps]
    network = cfg.model + (f" retrofitted with JumpReLU (kappa {jumprelu:g})" if jumprelu is not None else "")
    print(f"model: {network} on {cfg.dataset} ({profile} recipe), device {device}, "
          f"threads {torch.get_num_threads()}, first {len(test.y)} test images")
    rows = worst_case_vs_autoattack(model, test.x, test.y, eps_list, norm=norm, steps=steps, queries=queries,
                                    batch_size=batch_size, seed=cfg.seed, members=members, targets=targets,
                                    first=first)
    names = [m.name for m in first] + (members or [m.name for m in evaluate.default_members()])
    return {"kind": "worst_case", "profile": profile, "model": cfg.model, "defense": (
                {"name": "jumprelu", "kappa": jumprelu} if jumprelu is not None else None),
            "dataset": cfg.dataset, "n": len(test.y),
            "norm": norm, "steps": steps, "queries": queries, "members": names, "targets": targets, "rows": rows,
            "provenance": provenance(device)}
