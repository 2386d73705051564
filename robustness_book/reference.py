"""Committed reference runs, and the published site built from them (no chapter is executed for the site).

``python -m robustness_book reference make --profile laptop`` (``make reference PROFILE=laptop``) runs every chapter
through the runner, each in its own process (wall time and peak memory measured as the benchmark does), and
writes under ``reference/<profile>/``: each chapter's results file ``<id>.json``, its executed notebook
``<id>.ipynb`` (figures as PNG, no widget state, the machine's absolute paths replaced by placeholders) and
``provenance.json`` (commit, uncommitted changes or not, machine and device, library versions, date, and per
chapter its wall time and peak memory; the SHA-256 of every file). Everything is written to a temporary folder
beside the reference and swapped in at the end: a failed chapter leaves the previous reference as it was.

``python -m robustness_book reference site`` (``make site``) checks every reference folder (a missing or altered file,
or a folder holding another profile's run, is refused naming the file and the command that remakes it), stages
the book with one page per chapter drawn from the reference (with what produced it, a "stale" note when the
chapter's code changed after that commit, the notebook as a download, and a "run this chapter" box) or, when no
reference exists yet, a page that says so, and builds it with Jupyter Book with execution off.
``python -m robustness_book reference check`` runs the checks alone.

Both books have ``book/_generated/results.md``, "Results at a glance" (:func:`glance_page`, first in the table of
contents after the introduction): one table per data set and threat model, a row per defense and network from each
chapter's ``glance_rows(results)``, rendered by :func:`render_glance`. The site draws it from the reference results
files (laptop, then paper where it exists; without a reference it says so and names ``make reference
PROFILE=laptop``); ``make book`` from the results of the run it just made (``reference glance --profile P``), so the
page and the chapters it links to show the same numbers.
"""
from __future__ import annotations

import ast
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import nbformat

from .chapters import CHAPTER_IDS, get_chapter
from .config import PROFILES, resolve
from .report import pct, pct_interval
from .results import repo_root, results_path

#: The profiles a reference folder may hold (``auto`` is resolved before a run).
REFERENCE_PROFILES = tuple(p for p in PROFILES if p != "auto")
#: The profile the site's chapter pages show, and the one shown beside it where it exists.
SITE_PROFILE = "laptop"
PAPER_PROFILE = "paper"
PROVENANCE = "provenance.json"
#: Output mime types that hold widget state (useless on a static page, and machine-specific).
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"


class ReferenceError(ValueError):
    """A reference folder that cannot be used: the message names the file and the command that remakes it."""


def default_reference_dir() -> Path:
    return repo_root() / "reference"


def remake_command(profile: str, chapter: str | None = None) -> str:
    if chapter is None:
        return f"make reference PROFILE={profile}"
    return f"python -m robustness_book reference make {chapter} --profile {profile}"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------------------------------------------
# Absolute paths and widget state out of the committed files

def path_placeholders(env: dict | None = None) -> list[tuple[str, str]]:
    """(absolute path, placeholder) pairs, longest path first: the checkout, the data / checkpoint / results /
    adversary folders, the system's temporary folder and $HOME."""
    env = os.environ if env is None else env
    pairs: list[tuple[str, str]] = []
    named = [("ROBUSTNESS_DATA", "<ROBUSTNESS_DATA>"), ("ROBUSTNESS_CHECKPOINTS", "<ROBUSTNESS_CHECKPOINTS>"),
             ("ROBUSTNESS_RESULTS", "<ROBUSTNESS_RESULTS>"), ("ROBUSTNESS_ADVERSARIES", "<ROBUSTNESS_ADVERSARIES>"),
             ("ROBUSTNESS_DATA_MIRROR", "<ROBUSTNESS_DATA_MIRROR>")]
    for var, placeholder in named:
        if env.get(var):
            pairs.append((env[var], placeholder))
    pairs.append((str(repo_root()), "<repo>"))
    pairs.append((tempfile.gettempdir(), "<tmp>"))
    if env.get("HOME"):
        pairs.append((env["HOME"], "~"))
    out: dict[str, str] = {}
    for path, placeholder in pairs:
        for variant in {path.rstrip("/"), os.path.realpath(path).rstrip("/")}:
            if len(variant) > 1 and variant not in out:  # never "/" itself
                out[variant] = placeholder
    return sorted(out.items(), key=lambda kv: -len(kv[0]))


def strip_paths(value: Any, pairs: list[tuple[str, str]], key: str = "") -> Any:
    """``value`` with every absolute path of ``pairs`` replaced by its placeholder, in every string except image
    data (base64 PNG is left byte for byte)."""
    if key.startswith("image/"):
        return value
    if isinstance(value, str):
        for path, placeholder in pairs:
            value = value.replace(path, placeholder)
        return value
    if isinstance(value, dict):
        return {k: strip_paths(v, pairs, k) for k, v in value.items()}
    if isinstance(value, list):
        return [strip_paths(v, pairs) for v in value]
    return value


def clean_notebook(notebook, pairs: list[tuple[str, str]]):
    """A copy of the executed ``notebook`` for the reference: no widget state (the notebook's ``widgets``
    metadata, widget-view outputs), no absolute paths of the machine; figures kept as they are."""
    nb = nbformat.from_dict(json.loads(json.dumps(notebook)))
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        cell.get("metadata", {}).pop("widgets", None)
        for output in cell.get("outputs", []):
            data = output.get("data")
            if isinstance(data, dict) and WIDGET_MIME in data:
                del data[WIDGET_MIME]
                if not data:
                    data["text/plain"] = ""
    return nbformat.from_dict(strip_paths(nb, pairs))


# --------------------------------------------------------------------------------------------------------------
# Checking a reference folder

def read_provenance(folder: Path, profile: str | None = None) -> dict:
    """The provenance of a reference folder, after checking it: a missing or altered file (SHA-256), a file
    that is not listed, or a folder holding another profile's run raises :class:`ReferenceError`. ``profile``:
    the profile the folder must hold (default: its name)."""
    folder = Path(folder)
    profile = profile or folder.name
    if profile not in REFERENCE_PROFILES:
        raise ReferenceError(f"{folder} is not named after a profile ({', '.join(REFERENCE_PROFILES)}); a reference "
                             f"folder is reference/<profile>, made by: make reference PROFILE=<profile>")
    path = folder / PROVENANCE
    remake = remake_command(profile)
    if not path.is_file():
        raise ReferenceError(f"{path} is missing, so {folder} cannot be checked; remake it with: {remake}")
    try:
        prov = json.loads(path.read_text(encoding="utf-8"))
        files, chapters = prov["files"], prov["chapters"]
        if not isinstance(files, dict) or not isinstance(chapters, dict):
            raise TypeError
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise ReferenceError(f"{path} is not a reference provenance file (JSON with files and chapters); "
                             f"remake it with: {remake}") from None
    if prov.get("profile") != profile:
        raise ReferenceError(f"{folder} holds a run of profile {prov.get('profile')!r} ({path}), not {profile!r}: "
                             f"a reference is refused in another profile's folder; remake it with: {remake}")
    for name, digest in files.items():
        file = folder / name
        if Path(name).name != name:
            raise ReferenceError(f"{path} lists {name!r}, which is not a file of {folder}; remake it with: {remake}")
        if not file.is_file():
            raise ReferenceError(f"{file} is missing (listed in {path}); remake it with: {remake}")
        if sha256(file) != digest:
            raise ReferenceError(f"{file} was altered: its SHA-256 differs from the one in {path}; remake it with: "
                                 f"{remake} (or restore it: git checkout -- {file})")
    for chapter, entry in chapters.items():
        if chapter not in CHAPTER_IDS:
            raise ReferenceError(f"{path} names an unknown chapter {chapter!r}; remake it with: {remake}")
        for name in (entry.get("results"), entry.get("notebook")):
            if name not in files:
                raise ReferenceError(f"{path}: chapter {chapter} has no checked file {name!r}; remake it with: "
                                     f"{remake_command(profile, chapter)}")
        made = json.loads((folder / entry["results"]).read_text(encoding="utf-8"))
        if made.get("profile") != profile or made.get("chapter") != chapter:
            raise ReferenceError(f"{folder / entry['results']} is the results of chapter {made.get('chapter')!r} "
                                 f"with profile {made.get('profile')!r}, not {chapter!r} with {profile!r}: refused; "
                                 f"remake it with: {remake_command(profile, chapter)}")
    listed = set(files) | {PROVENANCE}
    stray = sorted(p.name for p in folder.iterdir() if p.is_file() and p.name not in listed)
    if stray:
        raise ReferenceError(f"{folder} holds files its {PROVENANCE} does not list: {', '.join(stray)}; remove them "
                             f"or remake the reference with: {remake}")
    return prov


def reference_folders(reference_dir: Path) -> list[Path]:
    """The profile folders under ``reference_dir`` (``reference/bench`` and the like are not chapter runs)."""
    reference_dir = Path(reference_dir)
    return [reference_dir / p for p in REFERENCE_PROFILES if (reference_dir / p).is_dir()]


def check_references(reference_dir: Path) -> dict[str, dict]:
    """``{profile: provenance}`` of every reference folder, each checked (:func:`read_provenance`)."""
    return {folder.name: read_provenance(folder) for folder in reference_folders(reference_dir)}


# --------------------------------------------------------------------------------------------------------------
# Stale: the chapter's code changed after the reference's commit

#: The shared verdict rules (three outcomes, the floor, the health gate): a change there changes every page's verdict.
VERDICT_RULES = "robustness_book/evaluate/outcome.py"


def chapter_paths(chapter: str, root: Path | None = None) -> list[str]:
    """The files a chapter's page comes from (relative to the checkout): its notebook, its chapter module, the
    book's verdict rules (:data:`VERDICT_RULES`: every outcome on the page follows them) and the defense modules
    the chapter module imports."""
    root = root or repo_root()
    module = Path("robustness_book") / "chapters" / f"{chapter}.py"
    paths = [get_chapter(chapter).notebook, module.as_posix(), VERDICT_RULES]
    try:
        tree = ast.parse((root / module).read_text(encoding="utf-8"))
    except (OSError, SyntaxError):
        return paths
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.module:
            base = node.module.lstrip(".") if node.level else node.module.removeprefix("robustness_book.")
            if base == "defenses":
                names = [a.name for a in node.names]
            elif base.startswith("defenses."):
                names = [base.split(".", 1)[1].split(".")[0]]
        for name in names:
            candidate = f"robustness_book/defenses/{name}.py"
            if (root / candidate).is_file() and candidate not in paths:
                paths.append(candidate)
    return paths


def _git(args: list[str], cwd: Path) -> subprocess.CompletedProcess | None:
    try:
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=20,
                              env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"})
    except (OSError, subprocess.SubprocessError):
        return None


def stale_since(commit: str | None, paths: list[str], root: Path | None = None) -> str | None:
    """The last commit that touched ``paths`` when it is not already in ``commit`` (the reference is stale), else
    ``None``; also ``None`` whenever git cannot tell (no git, not a repository, an unknown commit)."""
    root = Path(root or repo_root())
    if not commit:
        return None
    last = _git(["log", "-1", "--format=%H", "--", *paths], root)
    if last is None or last.returncode != 0 or not last.stdout.strip():
        return None
    last_commit = last.stdout.strip()
    if last_commit == commit:
        return None
    ancestor = _git(["merge-base", "--is-ancestor", last_commit, commit], root)
    if ancestor is None or ancestor.returncode not in (0, 1):
        return None  # e.g. the reference's commit is not in this clone: say nothing
    return None if ancestor.returncode == 0 else last_commit


# --------------------------------------------------------------------------------------------------------------
# Making a reference

def _uncommitted() -> bool | None:
    out = _git(["status", "--porcelain", "--untracked-files=no"], repo_root())
    return None if out is None or out.returncode != 0 else bool(out.stdout.strip())


def execute_chapter(chapter: str, profile: str, staging: Path) -> dict:
    """Run one chapter through the runner in its own process, its page into ``staging``: ``{"seconds",
    "peak_rss_bytes", "checkpoints_at_start", "notebook", "results", "error"}`` (``error`` ``None`` on success;
    ``checkpoints_at_start``: the trained networks already in the checkpoint cache when the chapter started)."""
    from .bench import measure_run
    from .runner import logs_dir

    from .runtime import checkpoint_dir

    log = logs_dir() / f"reference-{chapter}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    # how many trained networks the chapter found cached: its wall time means "from an empty cache" only at 0
    cached = len(list(checkpoint_dir().glob("*.pt"))) if checkpoint_dir().is_dir() else 0
    started = time.time()
    run = measure_run(chapter, profile, dict(os.environ), staging, log)
    results = results_path(chapter, profile)
    error = None
    if run["returncode"] != 0:
        lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
        failed = [ln for ln in lines if "ChapterFailed" in ln or "Error" in ln]
        error = (failed or lines or ["no output"])[-1] + f" (log: {log})"
    elif not results.is_file() or results.stat().st_mtime < started:
        error = f"the run wrote no new results file {results}"
    return {"seconds": run["seconds"], "peak_rss_bytes": run["peak_rss_bytes"], "checkpoints_at_start": cached,
            "notebook": staging / f"{chapter}.ipynb", "results": results, "error": error}


def _resolve_profile(profile: str) -> str:
    concrete = resolve(get_chapter(CHAPTER_IDS[0]), profile=profile)["profile"]
    if concrete not in REFERENCE_PROFILES:
        raise ValueError(f"profile {profile!r} is not one a reference can be made for: {', '.join(REFERENCE_PROFILES)}")
    return concrete


def make_reference(profile: str = SITE_PROFILE, chapters: list[str] | None = None,
                   out: Path | None = None) -> Path:
    """Run ``chapters`` (default: every chapter) at ``profile`` and write ``<out>/<profile>/`` (``out`` defaults to
    ``reference/``) only if every chapter succeeded. A subset keeps the other chapters of the previous reference
    (which must pass its checks). Returns the folder."""
    from .bench import provenance as machine_provenance
    from .runner import ChapterFailed

    profile = _resolve_profile(profile)
    chapters = list(chapters or CHAPTER_IDS)
    unknown = [c for c in chapters if c not in CHAPTER_IDS]
    if unknown:
        raise ValueError(f"unknown chapter(s) {', '.join(unknown)}; allowed: {', '.join(CHAPTER_IDS)}")
    for chapter in chapters:
        resolve(get_chapter(chapter), profile=profile)
    root = Path(out) if out is not None else default_reference_dir()
    root.mkdir(parents=True, exist_ok=True)
    if not os.access(root, os.W_OK):
        raise ValueError(f"the reference folder {root} is not writable; give a writable folder with --out")
    target = root / profile
    previous = read_provenance(target) if target.exists() else None  # a damaged one is refused before any run
    pairs = path_placeholders()
    staging = Path(tempfile.mkdtemp(prefix=f".{profile}.tmp-", dir=root))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(staging, 0o777 & ~umask)  # mkdtemp's 0700 would become the reference folder's mode
    try:
        run_dir = staging / "_run"
        run_dir.mkdir()
        entries: dict[str, dict] = {}
        for chapter in chapters:
            print(f"[reference] {chapter} (profile {profile}) ...", flush=True)
            run = execute_chapter(chapter, profile, run_dir)
            if run["error"]:
                raise ChapterFailed(f"chapter {chapter} failed: {run['error']}; nothing under {target} was changed")
            content = json.loads(Path(run["results"]).read_text(encoding="utf-8"))
            if content.get("profile") != profile or content.get("overridden"):
                raise ChapterFailed(f"chapter {chapter} wrote results of profile {content.get('profile')!r} with "
                                    f"overrides {content.get('overridden')}; a reference is the profile's own run")
            (staging / f"{chapter}.json").write_text(
                json.dumps(strip_paths(content, pairs), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
            notebook = nbformat.read(run["notebook"], as_version=4)
            nbformat.write(clean_notebook(notebook, pairs), staging / f"{chapter}.ipynb")
            prov = content.get("provenance", {})
            entries[chapter] = {"results": f"{chapter}.json", "notebook": f"{chapter}.ipynb",
                                "seconds": round(run["seconds"], 1),
                                "peak_rss_bytes": run["peak_rss_bytes"],
                                "checkpoints_at_start": run.get("checkpoints_at_start"),
                                "device": prov.get("device"), "versions": prov.get("versions"),
                                "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
            print(f"[reference] {chapter} done in {run['seconds'] / 60:.1f} min", flush=True)
        shutil.rmtree(run_dir)
        machine = machine_provenance("cpu")
        commit, dirty = machine["git_commit"], _uncommitted()
        for entry in entries.values():
            entry.update(git_commit=commit, uncommitted_changes=dirty)
        if previous:
            for chapter, entry in previous["chapters"].items():
                if chapter not in entries:
                    for name in (entry["results"], entry["notebook"]):
                        shutil.copy2(target / name, staging / name)
                    entries[chapter] = entry
        ordered = {c: entries[c] for c in CHAPTER_IDS if c in entries}
        files = {name: sha256(staging / name) for e in ordered.values() for name in (e["results"], e["notebook"])}
        content = {"profile": profile, "made_by": remake_command(profile),
                   "git_commit": commit, "uncommitted_changes": dirty,
                   "machine": {k: machine[k] for k in ("cpu", "cores", "threads")},
                   "versions": machine["versions"], "date": machine["date"],
                   "chapters": ordered, "files": files}
        (staging / PROVENANCE).write_text(json.dumps(content, indent=1) + "\n", encoding="utf-8")
        read_provenance(staging, profile)
        old = None
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{profile}.old-", dir=root))
            old.rmdir()
            os.rename(target, old)
        os.rename(staging, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    print(f"[reference] wrote {target} ({len(ordered)} chapter(s)); commit it with the code it was made from")
    return target


# --------------------------------------------------------------------------------------------------------------
# The site

def _minutes(seconds: float | None) -> str:
    return "?" if seconds is None else f"{seconds / 60:.1f}"


def _machine(prov: dict, entry: dict) -> str:
    m = prov.get("machine", {})
    device = entry.get("device") or "?"
    return f"{m.get('cpu', '?')} ({m.get('cores', '?')} cores, {m.get('threads', '?')} threads), device {device}"


def page_header(chapter: str, profile: str, prov: dict, stale: str | None, download: str | None) -> str:
    """The Markdown a chapter page opens with: what produced it (profile, commit, machine, date, minutes, peak
    memory), a stale note with the refreshing command when the chapter's code changed after that commit, and the
    download of the executed notebook."""
    entry = prov["chapters"][chapter]
    commit = entry.get("git_commit") or "unknown"
    dirty = " (with uncommitted changes)" if entry.get("uncommitted_changes") else ""
    versions = entry.get("versions") or prov.get("versions") or {}
    libs = ", ".join(f"{k} {v}" for k, v in versions.items() if v)
    peak = entry.get("peak_rss_bytes")
    lines = [":::{admonition} What produced this page", ":class: note", "",
             f"Reference run of profile **{profile}**, commit `{commit[:10]}`{dirty}, on {_machine(prov, entry)}, "
             f"{entry.get('date', '?')}, {_minutes(entry.get('seconds'))} minutes"
             + (f", peak memory {peak / 2**30:.2f} GiB" if peak else "") + f". Libraries: {libs}.",
             "", f"Remake it with `{remake_command(profile)}` (every chapter) or "
                 f"`{remake_command(profile, chapter)}` (this one)."]
    if download:
        lines += ["", f"{{download}}`Download this notebook with its outputs (.ipynb) <{download}>`"]
    lines += [":::", ""]
    if stale:
        lines += [":::{warning}", f"**Stale**: the chapter's code, notebook or the book's verdict rules changed "
                  f"after this run (the latest such commit, `{stale[:10]}`, touched one or more of "
                  f"{', '.join(f'`{p}`' for p in chapter_paths(chapter))}): the page may no longer be what the code "
                  f"prints. Refresh it with "
                  f"`{remake_command(profile, chapter)}`.", ":::", ""]
    return "\n".join(lines)


def run_box(chapter: str) -> str:
    """The commands that run this chapter: smoke, laptop, and laptop with one parameter changed."""
    spec = get_chapter(chapter)
    seed = spec.profiles.get("laptop", {}).get("seed", 0) or 0
    return "\n".join([
        ":::{admonition} Run this chapter", ":class: tip", "",
        "```bash",
        "# smoke: checks that every cell runs (numbers not meaningful)",
        f"python -m robustness_book run {chapter} --profile smoke",
        "# laptop: the real numbers at reduced scale",
        f"python -m robustness_book run {chapter} --profile laptop",
        "# laptop with one parameter changed (the page goes beside its results, never over this one)",
        f"python -m robustness_book run {chapter} --profile laptop -p seed {seed + 1}",
        "```", "",
        f"`python -m robustness_book params {chapter}` lists every parameter. Installing, GPU included: "
        "{doc}`../running`.", ":::", ""])


#: The key table of a chapter shown beside another profile's: the glance columns that hold the verdict.
BESIDE_MEASURES = (("clean", "clean"), ("worst case", "worst_case"), ("AutoAttack alone", "autoattack"))


def beside_table(rows: dict[str, list[dict]]) -> str:
    """A chapter's key table at two profiles side by side (``{profile: glance rows}``, in column order): one line per
    data set, threat model, network, defense and claim, each profile's clean accuracy, worst case, AutoAttack and
    verdict, "–" where one profile has no such row. Numbers are the records' own, as on the glance page."""
    profiles = list(rows)
    keyed: dict[tuple, dict[str, dict]] = {}
    for profile, members in rows.items():
        for row in members:
            key = (row["dataset"], row["threat_model"], row["network"], row["defense"], row["claim"])
            keyed.setdefault(key, {})[profile] = row
    head = ["data set", "threat model", "network", "defense", "claim"]
    for profile in profiles:
        head += [f"{name} ({profile})" for name, _ in BESIDE_MEASURES] + [f"verdict ({profile})"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, by_profile in keyed.items():
        cells = [str(k) for k in key]
        for profile in profiles:
            row = by_profile.get(profile)
            if row is None:
                cells += ["–"] * (len(BESIDE_MEASURES) + 1)
                continue
            cells += [_measure_cell(row[k]) for _, k in BESIDE_MEASURES]
            cells.append(f"**{row['outcome']}**" + (f" ({row['reason']})" if row["reason"] else ""))
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def _paper_note(chapter: str, has_paper: bool, beside: str = "") -> str:
    if has_paper:
        return (f"A paper-scale run exists: {{doc}}`the paper-profile page of this chapter <{chapter}_paper>` "
                f"shows all its tables. Its key numbers beside this page's:\n\n{beside}")
    return (f"No paper-scale run exists yet for this chapter: it needs a GPU; make one with "
            f"`{remake_command(PAPER_PROFILE)}`.\n")


def _insert_after_title(nb, cells: list, suffix: str = "") -> None:
    """Put ``cells`` right under the page's title (its first ``# `` heading), splitting the title's cell when the
    heading shares it with other text."""
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "markdown" and cell.source.lstrip().startswith("# "):
            title, _, rest = cell.source.lstrip().partition("\n")
            cell.source = title + suffix
            after = [nbformat.v4.new_markdown_cell(rest.strip("\n"))] if rest.strip() else []
            nb.cells[i + 1:i + 1] = cells + after
            return
    nb.cells[0:0] = cells


def _reference_page(chapter: str, profile: str, folder: Path, prov: dict, stage: Path, extra_md: str):
    entry = prov["chapters"][chapter]
    nb = nbformat.read(folder / entry["notebook"], as_version=4)
    downloads = stage / "book" / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    name = f"{chapter}-{profile}.ipynb"
    shutil.copy2(folder / entry["notebook"], downloads / name)
    stale = stale_since(entry.get("git_commit"), chapter_paths(chapter))
    header = page_header(chapter, profile, prov, stale, f"../downloads/{name}")
    suffix = f" ({profile} profile)" if profile == PAPER_PROFILE else ""
    _insert_after_title(nb, [nbformat.v4.new_markdown_cell(header + "\n" + extra_md + "\n" + run_box(chapter))],
                        suffix)
    if not any(c.cell_type == "markdown" and c.source.lstrip().startswith("# ") for c in nb.cells):
        nb.cells.insert(0, nbformat.v4.new_markdown_cell(f"# {get_chapter(chapter).title}"))
    return nb


def _missing_page(chapter: str, profile: str, extra_md: str) -> str:
    spec = get_chapter(chapter)
    return "\n".join([f"# {spec.title}", "", ":::{admonition} No reference run yet", ":class: warning", "",
                      f"No reference run of profile **{profile}** exists yet for this chapter, so this page has no "
                      f"results. Make one with `{remake_command(profile)}` and commit `reference/{profile}/`; "
                      f"or run the chapter yourself (below), or build the whole book with `make book`.", ":::", "",
                      extra_md, run_box(chapter)])


def stage_site(stage: Path, reference_dir: Path | None = None, profile: str = SITE_PROFILE) -> Path:
    """Write the book's sources into ``stage`` with the chapter pages drawn from the checked references; returns
    the staged ``_toc.yml``. Raises :class:`ReferenceError` before writing anything when a reference is bad."""
    import yaml

    reference_dir = Path(reference_dir) if reference_dir is not None else default_reference_dir()
    provs = check_references(reference_dir)
    root = repo_root()
    if stage.exists():
        shutil.rmtree(stage)
    stage.mkdir(parents=True)
    config = yaml.safe_load((root / "_config.yml").read_text(encoding="utf-8"))
    config.setdefault("execute", {})["execute_notebooks"] = "off"  # the site never executes a chapter
    (stage / "_config.yml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    shutil.copytree(root / "book", stage / "book", ignore=shutil.ignore_patterns("executed", ".*"))
    executed = stage / "book" / "executed"
    executed.mkdir()
    main, paper = provs.get(profile, {}).get("chapters", {}), provs.get(PAPER_PROFILE, {}).get("chapters", {})
    with_paper = profile != PAPER_PROFILE and bool(paper)
    for chapter in CHAPTER_IDS:
        has_paper = with_paper and chapter in paper
        beside = ""
        if has_paper and chapter in main:
            beside = beside_table({p: glance_rows(read_results_folder(reference_dir / p, [chapter]), [])
                                   for p in (profile, PAPER_PROFILE)})
        note = "" if profile == PAPER_PROFILE else _paper_note(chapter, has_paper, beside)
        if chapter in main:
            nb = _reference_page(chapter, profile, reference_dir / profile, provs[profile], stage, note)
            nbformat.write(nb, executed / f"{chapter}.ipynb")
        else:
            (executed / f"{chapter}.md").write_text(_missing_page(chapter, profile, note), encoding="utf-8")
        if has_paper:
            back = f"The {{doc}}`{profile}-profile page <{chapter}>` is this chapter's main page.\n"
            nb = _reference_page(chapter, PAPER_PROFILE, reference_dir / PAPER_PROFILE, provs[PAPER_PROFILE],
                                 stage, back)
            nbformat.write(nb, executed / f"{chapter}_paper.ipynb")
    toc = yaml.safe_load((root / "_toc.yml").read_text(encoding="utf-8"))

    def add_sections(node):
        if isinstance(node, dict):
            file = node.get("file", "")
            if file.startswith("book/executed/") and with_paper and file.rsplit("/", 1)[1] in paper:
                node.setdefault("sections", []).append({"file": f"{file}_paper"})
            for value in node.values():
                add_sections(value)
        elif isinstance(node, list):
            for value in node:
                add_sections(value)

    add_sections(toc)
    write_glance(stage / GLANCE_FILE, glance_page(reference_dir, profile))
    (stage / "_toc.yml").write_text(yaml.safe_dump(toc, sort_keys=False), encoding="utf-8")
    return stage / "_toc.yml"


def build_site(stage: Path, output: Path, reference_dir: Path | None = None, profile: str = SITE_PROFILE) -> Path:
    """Stage (:func:`stage_site`) and build with Jupyter Book, execution off; returns the HTML folder."""
    stage_site(stage, reference_dir, profile)
    jb = Path(sys.executable).with_name("jupyter-book")
    command = [str(jb) if jb.exists() else "jupyter-book", "build", str(stage), "--path-output", str(output),
               "--warningiserror", "--keep-going", "--config", str(stage / "_config.yml")]
    start = time.perf_counter()
    subprocess.run(command, check=True)
    html = Path(output) / "_build" / "html"
    print(f"[site] built {html} from the references in {time.perf_counter() - start:.0f} s (no chapter executed)")
    return html


# --------------------------------------------------------------------------------------------------------------
# "Results at a glance": one generated page from the reference results

#: The page's file in the staged book, and its title.
GLANCE_PAGE = "results"
#: Where both books (``make book`` and the site) find the glance page; ``_toc.yml`` lists it.
GLANCE_FILE = Path("book") / "_generated" / f"{GLANCE_PAGE}.md"
GLANCE_TITLE = "Results at a glance"
#: The columns of each table: (header, row key); the measures are :data:`kit.GLANCE_MEASURES`.
GLANCE_COLUMNS = (("network", "network"), ("defense", "defense"), ("clean", "clean"),
                  ("paper's attack", "paper_attack_acc"), ("AutoAttack alone", "autoattack"),
                  ("book's worst case", "worst_case"), ("paper reported", "paper_reported"),
                  ("AutoAttack flags", "flags"), ("verdict", "outcome"), ("claim judged", "claim"),
                  ("profile", "profile"), ("chapter", "section"))
_NON_FINITE = {"inf": float("inf"), "-inf": float("-inf"), "nan": float("nan")}


def _restored(value: Any) -> Any:
    """A results file's ``"inf"`` / ``"-inf"`` / ``"nan"`` strings as floats again (JSON has no such numbers)."""
    if isinstance(value, str) and value in _NON_FINITE:
        return _NON_FINITE[value]
    if isinstance(value, dict):
        return {k: _restored(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_restored(v) for v in value]
    return value


def read_results_folder(folder: Path, chapters: Sequence[str] = CHAPTER_IDS) -> dict[str, dict]:
    """``{chapter: results}`` of the chapters' results files ``<chapter>.json`` in ``folder`` (book order)."""
    folder = Path(folder)
    return {c: _restored(json.loads((folder / f"{c}.json").read_text(encoding="utf-8")))
            for c in CHAPTER_IDS if c in chapters and (folder / f"{c}.json").is_file()}


def glance_rows(results_by_chapter: dict[str, dict], unread: list[str] | None = None) -> list[dict]:
    """Every chapter's ``glance_rows(results)`` (the row vocabulary: :data:`robustness_book.chapters.kit.GLANCE_KEYS`),
    in book order. With ``unread`` (a list), a results file its chapter's verdict cannot read (an older or a
    damaged one) is named there, with the error, instead of stopping the page."""
    from importlib import import_module

    rows: list[dict] = []
    for chapter, results in results_by_chapter.items():
        try:
            rows += import_module(f"{__package__}.chapters.{chapter}").glance_rows(results)
        except (KeyError, ValueError, TypeError, IndexError, AttributeError) as err:
            if unread is None:
                raise
            unread.append(f"{chapter} ({results.get('profile')}): {type(err).__name__}: {err}")
    return rows


def _measure_cell(m: dict | None) -> str:
    if m is None:
        return "–"
    return pct_interval(m) + (f" (n = {m['n']:,})" if m.get("n") else "")


def _section_link(row: dict, site_profile: str) -> str:
    """The row's chapter section on the staged site: a paper row beside the site's profile is on the paper page."""
    chapter, _, anchor = row["section"].partition("#")
    page = chapter + ("_paper" if row["profile"] == PAPER_PROFILE != site_profile else "")
    return f'<a href="../executed/{page}.html#{anchor}">{chapter}</a>'  # from book/_generated/


def render_glance(rows: list[dict], empty_note: str = "", site_profile: str = SITE_PROFILE) -> str:
    """The Markdown of the glance page: one table per data set and threat model (rows in the order given), each
    number a record's value as a percentage with its 95% interval and n; the paper's numbers lettered, with their
    sources under the table. ``empty_note``: what the page says when ``rows`` is empty; ``site_profile``: the
    profile of the site's chapter pages (the links' targets)."""
    lines = [f"# {GLANCE_TITLE}", "",
             "Every defense and network of the book in one place, per data set and threat model, generated from the "
             "reference results alone (nothing here is typed by hand). Accuracies are percentages with their 95% "
             "Wilson intervals and the number of images n; *paper's attack* is the attack the paper evaluated "
             "with, *AutoAttack alone* the field's reference number where a chapter ran it on its own, *book's "
             "worst case* the strongest evaluation the chapter ran (its adaptive worst case, with AutoAttack on the "
             "survivors where it ran: an upper bound on the true robust accuracy), *paper reported* the number the "
             "paper published (from `robustness_book/anchors/`). The verdict is the chapter's own, with the reason "
             "when it is inconclusive; each row links to its chapter's verdict.", ""]
    if not rows:
        return "\n".join(lines + [empty_note, ""])
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["dataset"], row["threat_model"]), []).append(row)
    for (dataset, threat), members in groups.items():
        notes: list[str] = []
        body = []
        for row in members:
            cells = []
            for _, key in GLANCE_COLUMNS:
                value = row[key]
                if key in ("clean", "autoattack", "worst_case"):
                    cells.append(_measure_cell(value))
                elif key == "paper_attack_acc":
                    cells.append(f"{row['paper_attack']}: {_measure_cell(value)}" if row["paper_attack"] else "–")
                elif key == "paper_reported":
                    if value is None:
                        cells.append("–")
                    else:
                        notes.append(value["source"])
                        cells.append(f"{pct(value['value'])} ({chr(ord('a') + len(notes) - 1)})")
                elif key == "flags":
                    cells.append(", ".join(value) or "–")
                elif key == "outcome":
                    cells.append(f"**{value}**" + (f" ({row['reason']})" if row["reason"] else ""))
                elif key == "section":
                    cells.append(_section_link(row, site_profile))
                else:
                    cells.append(str(value))
            body.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        lines += [f"## {dataset}, {threat}", "",
                  "| " + " | ".join(h for h, _ in GLANCE_COLUMNS) + " |",
                  "|" + "---|" * len(GLANCE_COLUMNS), *body, ""]
        for i, source in enumerate(notes):
            lines += [f"({chr(ord('a') + i)}) {source}", ""]
    return "\n".join(lines)


def no_reference_note(profile: str = SITE_PROFILE) -> str:
    return "\n".join([":::{admonition} No reference run yet", ":class: warning", "",
                      f"No reference run of profile **{profile}** exists yet, so this page has no results. Make one "
                      f"with `{remake_command(profile)}` and commit `reference/{profile}/`.", ":::"])


def glance_page(reference_dir: Path | None = None, profile: str = SITE_PROFILE,
                results_dirs: dict[str, Path] | None = None, empty_note: str | None = None) -> str:
    """The glance page from the reference results: ``<reference_dir>/<profile>/`` first, then
    ``<reference_dir>/paper/`` where it exists (its rows marked with their profile). ``results_dirs``
    (``{profile: folder}``) reads other folders instead (``make book``: ``results/<profile>/``)."""
    if results_dirs is None:
        reference_dir = Path(reference_dir) if reference_dir is not None else default_reference_dir()
        results_dirs = {p: reference_dir / p for p in dict.fromkeys((profile, PAPER_PROFILE))}
    rows, unread, found = [], [], False
    for folder in results_dirs.values():
        if Path(folder).is_dir():
            results = read_results_folder(folder)
            found = found or bool(results)
            rows += glance_rows(results, unread)
    page = render_glance(rows, "" if found else empty_note or no_reference_note(profile), profile)
    if unread:
        page += "\n".join(["", ":::{warning}", "These results files have no row here: their chapter's verdict cannot "
                            f"read them; remake them with `{remake_command(profile)}`.", "",
                            *(f"- {line}" for line in unread), ":::", ""])
    return page


def write_glance(path: Path, page: str) -> Path:
    """Write the glance page to ``path`` (its folder made if missing), replacing it in one step."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, path)
    return path


def book_glance(profile: str, output: Path | None = None) -> Path:
    """``make book``'s glance page: from this checkout's results of ``profile`` (what the book's chapter pages show),
    written to :data:`GLANCE_FILE` (or ``output``)."""
    from .results import results_dir

    profile = resolve(get_chapter(CHAPTER_IDS[0]), profile=profile)["profile"]
    folder = results_dir() / profile
    empty = "\n".join([":::{admonition} No results yet", ":class: warning", "",
                        f"No chapter has results of the **{profile}** profile in this checkout yet; "
                        f"`make book PROFILE={profile}` runs them and rebuilds this page.", ":::"])
    page = glance_page(results_dirs={profile: folder}, profile=profile, empty_note=empty)
    return write_glance(output or repo_root() / GLANCE_FILE, page)
