"""``--page``: ``book/performance.md`` from the JSON files under ``reference/bench/`` (:func:`render_page`, a pure
function of those files; :func:`write_page` writes it)."""
from __future__ import annotations

import json
import os
from pathlib import Path

from .._io import atomic_write_text
from ..results import repo_root
from ..evaluate.members import classic_members
from ._common import verdict
from .budgets import BUDGETS, GB, REFERENCE_BUDGET_S, Budget, _budget_text, _minutes

#: Where the committed measurements live, and the page made from them.
BENCH_DIR = Path("reference") / "bench"
PAGE = Path("book") / "performance.md"
#: The JSON file of each mode under :data:`BENCH_DIR`.
JSON_FILES = {"speed": "speed.json", "worst_case": "worst_case.json", "peers": "peers.json",
              "chapters": "chapters.json"}


def _load(bench_dir: Path, kind: str) -> dict | None:
    path = Path(bench_dir) / JSON_FILES[kind]
    return json.loads(path.read_text()) if path.exists() else None


def _source_line(label: str, content: dict) -> str:
    p = content.get("provenance", {})
    commit = f"`{(p.get('git_commit') or 'unknown')[:10]}`"
    if p.get("uncommitted_changes"):
        commit += " with uncommitted changes"
    torch_version = p.get("versions", {}).get("torch", "?")
    device = p.get("device", "?")
    gpu = "" if str(device).startswith("cpu") else f", {device}"
    return (f"From `{label}`: commit {commit}, torch {torch_version}, {p.get('threads', '?')} thread(s), "
            f"{p.get('cpu', '?')} ({p.get('cores', '?')} cores){gpu}, {p.get('date', '?')}.")


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return out + ["| " + " | ".join(r) + " |" for r in rows]


def _missing(label: str, command: str) -> list[str]:
    return [f"No measurements yet: `{label}` does not exist. Make it with `{command}`, then rebuild this page with "
            f"`python -m robustness_book bench --page`.", ""]


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:.1f}%"


def _speed_sections(content: dict | None, label: str) -> list[str]:
    out = ["## The machine's limit", "",
           "Raw forward+backward: the gradient with respect to the input only, model in eval mode, as an attack "
           "computes it, at the attack's images themselves (where DeepFool starts) and at random points of the "
           "eps-ball around them (where PGD starts; a max-pool network is a few percent slower on such noisy "
           "inputs). Raw forward+backward+step: train mode, gradients of the weights and one optimizer step of the "
           "book's training recipe, on one batch. Images per second, the best of interleaved rounds.", ""]
    if content is None:
        return out + _missing(label, f"python -m robustness_book bench --json {label}") + \
            ["## Ratios to the limit", ""] + _missing(label, f"python -m robustness_book bench --json {label}")
    out += [_source_line(label, content), ""]
    out += _table(["model", "data", "inputs", "batch", "fwd+bwd images/s", "in the eps-ball",
                   "fwd+bwd+step images/s", "training recipe (laptop profile)"],
                  [[m["model"], m["dataset"], m["source"], str(m["batch_size"]),
                    f"{m['limit']['fwd_bwd_images_per_s']:,.0f}",
                    f"{m['limit'].get('fwd_bwd_ball_images_per_s', m['limit']['fwd_bwd_images_per_s']):,.0f}",
                    f"{m['limit']['fwd_bwd_step_images_per_s']:,.0f}", m["timings"]["train"].get("recipe", "")]
                   for m in content["models"]])
    out += ["", "## Ratios to the limit", "",
            "Each rate divided by its limit above: 1.0 means no overhead beyond the model's own arithmetic. "
            "PGD counts gradient steps (no early stop), divided by the limit in the eps-ball; the training loop is "
            "`robustness_book.train.train` on in-memory random data, divided by the forward+backward+step limit; "
            "DeepFool counts gradient rows, one per candidate class per image and iteration, divided by the limit "
            "at the images.", "", _source_line(label, content), ""]
    rows = []
    for m in content["models"]:
        df = m["timings"]["deepfool"]
        detail = {"pgd": f"PGD-{m['pgd_steps']}: {m['attack_images_per_s']['pgd']:,.0f} images/s",
                  "train": f"{m['timings']['train']['images']} random images per epoch",
                  "deepfool": f"{m['attack_images_per_s']['deepfool']:,.0f} images/s, "
                              f"{df['mean_iterations']:.2f} iterations × {df['candidates']} rows"}
        for r in m["ratios"]:
            rows.append([m["model"], r["what"], f"{r['rate']:,.0f}", f"{r['value']:.2f}", f"≥ {r['goal']:.2f}",
                         f"**{verdict(r['pass'])}**", detail[r["name"]]])
    out += _table(["model", "measure", "rate /s", "ratio", "goal", "verdict", "detail"], rows)
    return out + ["",
                  "Ratios move by a few hundredths between runs, and by more for a model as small as LeNetLike: each "
                  "of its steps allocates tens of megabytes of buffers, which glibc's allocator often gives back to "
                  "the system and then faults in again (thousands of page faults per step), and how often depends "
                  "on the heap layout of the process, which differs between the attack and the raw loop.", ""]


def _worst_case_section(content: dict | None, label: str, first: bool = True) -> list[str]:
    out = ["## Worst case and AutoAttack", "",
           "The toolkit's adaptive worst case beside AutoAttack (standard) on the same test images: robust accuracy "
           "with its 95% Wilson interval, and seconds. Each table names its ensemble; the chapters use "
           "`evaluate.default_members()`.", ""] if first else []
    if content is None:
        return out + _missing(label, f"python -m robustness_book bench --worst-case --json {label}")
    # files from before the ``members`` field measured the book's first ensemble
    names = content.get("members") or [m.name for m in classic_members()]
    members = ", ".join(names)
    budget = f"{content.get('steps', '?')} steps, Square {content.get('queries', '?')} queries"
    if "apgd_t" in names:
        budget += f", APGD-T {content.get('targets', '?')} targets"
    defense = content.get("defense") or {}
    network = content["model"] + (f" retrofitted with JumpReLU (κ = {defense['kappa']:g})"
                                  if defense.get("name") == "jumprelu" else "")
    out += [f"### {members} on {network}", "", _source_line(label, content), "",
            f"{network} on {content['dataset']} ({content['profile']} recipe), first {content['n']} test "
            f"images, {content['norm']}; ensemble {members} ({budget}).", ""]
    rows = []
    for r in content["rows"]:
        wc, aa = r["worst_case"], r["autoattack"]
        rows.append([f"{r['eps']:g}", _pct(r["clean"]),
                     f"{_pct(wc['robust'])} [{_pct(wc['interval'][0])}, {_pct(wc['interval'][1])}]",
                     f"{r['worst_case_seconds']:.1f}",
                     f"{_pct(aa['robust'])} [{_pct(aa['interval'][0])}, {_pct(aa['interval'][1])}]",
                     f"{aa['seconds']:.1f}", f"{r['worst_case_seconds'] / max(aa['seconds'], 1e-9):.2f}"])
    out += _table(["eps", "clean", "worst case [95% CI]", "s", "AutoAttack [95% CI]", "s", "time ratio"], rows)
    split = [r for r in content["rows"] if r.get("member_seconds")]  # recorded since the per-member timing
    if split:
        out += ["", "Where the worst case's time goes (images each member fooled that the earlier ones missed, "
                    "and its seconds):", ""]
        out += _table(["eps", *names], [[f"{r['eps']:g}", *(f"+{r['worst_case']['added'].get(m, 0)} in "
                                                           f"{r['member_seconds'].get(m, 0.0):.1f} s" for m in names)]
                                        for r in split])
    return out + [""]


def _peers_section(content: dict | None, label: str) -> list[str]:
    out = ["## Peers", "",
           "The same model and images through torchattacks and foolbox, in their own environment "
           "(`make bench-peers`).", ""]
    if content is None:
        return out + _missing(label, "make bench-peers")
    pgd, df = content["pgd"], content["deepfool"]
    versions = ", ".join(f"{k} {v}" for k, v in content.get("peer_versions", {}).items())
    out += [_source_line(label, content), "",
            f"{content['model']} on {content['dataset']} ({content['profile']} recipe), first {content['n']} test "
            f"images (clean accuracy {_pct(content['clean_accuracy'])}); {versions}.", "",
            f"PGD L∞: eps {pgd['eps']:g}, {pgd['steps']} steps of {pgd['step_size']:g}, random start. The toolkit "
            f"keeps each image's first fooling iterate and stops attacking it (early stop); without early stop it "
            f"does the same work as the others.", ""]
    out += _table(["library", "images/s", "robust accuracy"],
                  [[r["library"], f"{r['images_per_s']:,.0f}", _pct(r["robust_accuracy"])] for r in pgd["rows"]])
    out += ["", f"Toolkit ÷ torchattacks: **{pgd['speedup_vs_torchattacks']:.2f}×** (goal ≥ {pgd['goal']}×, "
                f"**{verdict(pgd['pass'])}**); without early stop "
                f"{pgd['speedup_vs_torchattacks_without_early_stop']:.2f}×.", "",
            f"DeepFool L2: overshoot {df['overshoot']}, at most {df['max_iter']} iterations, on the "
            f"{df.get('correct', '?')} images classified correctly. ρ = ‖δ‖₂ / ‖x‖₂ on [0, 1] pixels; its median "
            f"over the images each attack fooled, and over the {df.get('both_fooled', '?')} images both fooled (the "
            f"goal's comparison: the same images for both).", ""]

    def rho(v):
        return "—" if v is None else f"{v:.4f}"

    out += _table(["library", "images/s", "fooled", "median ρ (own fooled)", "median ρ (both fooled)"],
                  [[r["library"], f"{r['images_per_s']:,.1f}", _pct(r["fooled"]), rho(r["median_rho"]),
                    rho(r.get("median_rho_both_fooled"))] for r in df["rows"]])
    out += ["", f"Goal: {df['goal']}: **{verdict(df['pass'])}**.", ""]
    return out


def _chapters_section(content: dict | None, label: str, first: bool = True) -> list[str]:
    """The budget table of one ``--chapters`` JSON file; ``first=False`` for a later file that measured other
    chapters on another occasion (``chapters-<name>.json``): a sub-heading instead of the section's introduction."""
    out = ["## Chapter budgets", "",
           "Each chapter's profile run twice through the runner: with an empty checkpoint cache (its models "
           "train) and with that cache filled. Peak RSS is that of the run's process tree, notebook kernel "
           "included.", ""] if first else [f"### Measured separately: `{Path(label).name}`", ""]
    if content is None:
        return out + _missing(label, f"python -m robustness_book bench --chapters --json {label}")
    budget = BUDGETS.get(content["profile"]) if content.get("budget") is None else Budget(**content["budget"])
    out += [_source_line(label, content), "",
            f"Profile `{content['profile']}`; budget: {_budget_text(budget)}.", ""]
    rows = []
    for r in content["chapters"]:
        failed = [c["what"] for c in r["checks"] if not c["pass"]]
        rows.append([r["chapter"], _minutes(r["uncached_s"]), _minutes(r["cached_s"]),
                     f"{r['peak_rss_bytes'] / GB:.2f} GB",
                     f"**{verdict(r['pass'])}**" + (f" ({'; '.join(failed)})" if failed else "")])
    out += _table(["chapter", "without cache", "with cache", "peak RSS", "budget"], rows)
    if content.get("complete") is False:
        out += ["", "The run was cut off after these chapters; the others were not measured."]
    if content.get("note"):
        out += ["", f"Conditions of this run: {content['note']}"]
    return out + [""]


def _reference_section(provenances: dict[str, dict], label_dir: str) -> list[str]:
    """The committed reference runs' own timings (``reference/<profile>/provenance.json``): each chapter's wall time
    and peak memory as the run recorded them, their sum against the whole run's budget."""
    out = ["## Reference runs", "",
           "The runs the published site is built from (`make reference PROFILE=…`): each chapter in its own "
           "process, one after the other, sharing one checkpoint cache, so a chapter that reuses another's networks "
           "does not train them again. Wall time and peak RSS as the run recorded them in its provenance file.", ""]
    if not provenances:
        return out + [f"No reference run yet under `{label_dir}/`: make one with `make reference PROFILE=laptop`.",
                      ""]
    for profile, prov in provenances.items():
        chapters = prov.get("chapters", {})
        rows, total = [], 0.0
        for chapter, entry in chapters.items():
            total += entry.get("seconds") or 0.0
            rss = entry.get("peak_rss_bytes")
            cached = entry.get("checkpoints_at_start")  # absent in runs made before it was recorded
            rows.append([chapter, _minutes(entry.get("seconds")), "—" if rss is None else f"{rss / GB:.2f} GB",
                         "not recorded" if cached is None else str(cached),
                         f"`{(entry.get('git_commit') or '?')[:10]}`", str(entry.get("date", "?")),
                         str(entry.get("device", "?"))])
        limit = REFERENCE_BUDGET_S.get(profile)
        out += [f"### `{label_dir}/{profile}/provenance.json`", ""]
        out += _table(["chapter", "wall time", "peak RSS", "networks cached at start", "commit", "date", "device"],
                      rows)
        line = f"All {len(chapters)} chapters: {_minutes(total)}"
        # later chapters reuse what earlier ones trained; the run started from an empty cache only if its first
        # chapter found none
        first = min(chapters.values(), key=lambda e: str(e.get("date", ""))) if chapters else {}
        if limit is not None and first.get("checkpoints_at_start"):
            line += (f" (the budget of a whole run from an empty cache, {_minutes(limit)}, is not judged: the run's "
                     f"first chapter found {first['checkpoints_at_start']} trained networks in the cache)")
        elif limit is not None:
            line += (f" (budget of a whole run from an empty cache: {_minutes(limit)}, "
                     f"**{verdict(total <= limit)}**)")
        out += ["", line + ".", ""]
    return out


def render_page(bench_dir: str | os.PathLike, label_dir: str = BENCH_DIR.as_posix()) -> str:
    """``book/performance.md`` from the JSON files in ``bench_dir`` (named ``label_dir/<file>`` on the page): a
    pure function of their content. A missing file leaves its section saying how to make it."""
    bench_dir = Path(bench_dir)

    def label(kind: str) -> str:
        return f"{label_dir}/{JSON_FILES[kind]}"

    lines = ["# Performance", "",
             "```{note}",
             "Generated by `python -m robustness_book bench --page` from the JSON files under "
             f"`{label_dir}/`, which hold measurements of one machine (named under each table) and are committed "
             "with this page. Nothing here is typed by hand; to refresh a table, rerun the command it names.",
             "```", ""]
    lines += _speed_sections(_load(bench_dir, "speed"), label("speed"))
    lines += _worst_case_section(_load(bench_dir, "worst_case"), label("worst_case"))
    for other in sorted(bench_dir.glob("worst_case_*.json")):  # other ensembles and networks
        lines += _worst_case_section(json.loads(other.read_text()), f"{label_dir}/{other.name}", first=False)
    lines += _peers_section(_load(bench_dir, "peers"), label("peers"))
    lines += _chapters_section(_load(bench_dir, "chapters"), label("chapters"))
    for later in sorted(bench_dir.glob("chapters-*.json")):  # other chapters, measured on another occasion
        lines += _chapters_section(json.loads(later.read_text()), f"{label_dir}/{later.name}", first=False)
    reference_dir = bench_dir.parent  # reference/: bench/ beside one folder per profile
    provenances = {p.parent.name: json.loads(p.read_text()) for p in sorted(reference_dir.glob("*/provenance.json"))}
    lines += _reference_section(provenances, Path(label_dir).parent.as_posix())
    return "\n".join(lines).rstrip() + "\n"


def write_page(bench_dir: str | os.PathLike | None = None, out: str | os.PathLike | None = None) -> Path:
    root = repo_root()
    path = Path(out) if out is not None else root / PAGE
    atomic_write_text(path, render_page(bench_dir if bench_dir is not None else root / BENCH_DIR))
    print(f"wrote {path}")
    return path
