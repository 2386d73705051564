"""Command line: ``python -m robustness_book run CHAPTER... [--all] [--profile P] [-p NAME VALUE]...``,
``params CHAPTER`` (every parameter with its help and per-profile values), ``results`` (the results files that
exist), ``reference make|site|check`` (committed reference runs, the site built from them) and ``bench`` (speed near the limit; ``--worst-case``, ``--peers``, ``--chapters``, ``--page``)."""
from __future__ import annotations

import argparse
import ast
import os
import subprocess
import sys

from .chapters import CHAPTER_IDS
from .config import PROFILES


class MalformedLiteralError(ValueError):
    """A ``-p`` value that was meant as a Python literal (a list, a number, a quoted string) but does not parse."""


def parse_value(text: str):
    """A parameter value as papermill would get it: Python literal if it parses, else a string.

    Only plain words (``mnist``, ``abc``, ``nan``) fall back to a string. Text that starts as a literal does
    (a bracket, a quote, a digit, a sign or point before a digit) and does not parse raises
    :class:`MalformedLiteralError`, since as a string it would be refused for the wrong reason.
    """
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError) as err:
        import re

        head = text.lstrip()
        attempted = head[:1] in ("[", "(", "{", "'", '"') or bool(re.match(r"[+-]?\.?\d", head))
        if not attempted:
            return text
        why = (err.msg if isinstance(err, SyntaxError) else
               "only literals (numbers, strings, lists, tuples, dicts, True, False, None) are allowed, "
               "not an expression")
        raise MalformedLiteralError(f"parameter value {text!r} is not a valid Python literal: {why}") from None


def _profile_of(flag: str | None, params: dict) -> str:
    """The run's profile: ``--profile``, or ``-p profile NAME`` (papermill's spelling, which the running page
    also shows); both at once must agree."""
    given = params.pop("profile", None)
    if given is not None and given not in PROFILES:
        raise ValueError(f"parameter profile={given!r} is invalid: expected one of {', '.join(PROFILES)}")
    if given is not None and flag is not None and given != flag:
        raise ValueError(f"--profile {flag} and -p profile {given} disagree: give the profile once, with --profile")
    return flag or given or "auto"


def _check_chapters_and_threads(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """``run`` and ``reference make``: known chapter names, and ``--threads`` (exported for the kernels)."""
    unknown = [c for c in args.chapters if c not in CHAPTER_IDS]
    if unknown:
        parser.error(f"unknown chapter(s) {', '.join(unknown)}; allowed: {', '.join(CHAPTER_IDS)}")
    if args.threads is not None:
        if args.threads < 1:
            parser.error("--threads must be a positive integer")
        os.environ["ROBUSTNESS_THREADS"] = str(args.threads)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m robustness_book", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="execute chapter notebooks (jupytext → papermill)")
    run.add_argument("chapters", nargs="*", metavar="CHAPTER", help=f"one or more of: {', '.join(CHAPTER_IDS)}")
    run.add_argument("--all", action="store_true", help="every chapter of the book, in order")
    run.add_argument("--profile", default=None, choices=PROFILES, help="default auto")
    run.add_argument("-p", "--param", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                     help="override one parameter, e.g. -p eps 0.1 -p eps_grid_linf '[0, 0.1]'")
    run.add_argument("--output-dir", default=None, help="where executed notebooks go (default book/executed)")
    run.add_argument("--log-output", action="store_true", help="stream the notebook's output")
    run.add_argument("--threads", type=int, default=None,
                     help="torch CPU threads of the run (default: $ROBUSTNESS_THREADS, else every core); "
                          "give two runs side by side on a 2-core machine 1 each")
    params = sub.add_parser("params", help="every parameter of a chapter: help, allowed values, per-profile values")
    params.add_argument("chapter", choices=CHAPTER_IDS)
    sub.add_parser("results", help="list the results files that exist (profile, chapter, overrides, records)")
    models = sub.add_parser("models", help="the model zoo: list the shared trained models (cached or not), or "
                                           "`models train NAME` to train (or load) one")
    models.add_argument("action", nargs="?", default="list", choices=("list", "train"))
    models.add_argument("name", nargs="?", default=None, metavar="NAME", help="train: a zoo model name")
    models.add_argument("--profile", default="laptop", choices=PROFILES, help="whose recipes (default laptop)")
    ref = sub.add_parser("reference", help="make: run chapters into reference/<profile>/ (results, executed notebook, "
                                           "provenance); site: build the website from the references, executing "
                                           "nothing; check: check the references' files; glance: make book's "
                                           "results-at-a-glance page from this checkout's results of --profile")
    ref.add_argument("action", choices=("make", "site", "check", "glance"))
    ref.add_argument("chapters", nargs="*", metavar="CHAPTER", help="make: these chapters only (default: all; the "
                                                                     "others are kept from the previous reference)")
    ref.add_argument("--profile", default=None, choices=PROFILES,
                     help="make: the profile to run (default auto); site: the profile of the chapter pages "
                          "(default laptop; paper is shown beside it where it exists)")
    ref.add_argument("--out", default=None, metavar="DIR",
                     help="the reference folder, holding one folder per profile (default reference/)")
    ref.add_argument("--stage", default="_build/site-src", metavar="DIR",
                     help="site: where the book's sources are staged (default _build/site-src)")
    ref.add_argument("--output", default="_build/site", metavar="DIR",
                     help="site: where the site is built; the HTML lands in DIR/_build/html (default _build/site)")
    ref.add_argument("--threads", type=int, default=None, help="make: torch CPU threads of each chapter run")
    bench = sub.add_parser("bench", help="speed near the machine's limit, peers, chapter budgets, the page")
    bench.add_argument("--batch-size", type=int, default=256)
    bench.add_argument("--profile", default=None, choices=PROFILES,
                       help="--chapters: the profile the chapters run (default laptop); otherwise which chapter-1 "
                            "model to load/train (default smoke)")
    bench.add_argument("--chapters", nargs="*", default=None, metavar="CHAPTER",
                       help="instead: run each chapter (default: all) twice, without and with the checkpoint cache, "
                            "and check its time and memory budget")
    bench.add_argument("--note", default=None, metavar="TEXT",
                       help="--chapters: the conditions of the run in words (what else shared the machine), kept "
                            "with the figures and shown on the page")
    bench.add_argument("--peers", action="store_true",
                       help="instead: PGD and DeepFool beside torchattacks and foolbox (needs make bench-peers)")
    bench.add_argument("--page", action="store_true",
                       help="instead: write book/performance.md from the JSON files under reference/bench/")
    bench.add_argument("--json", default=None, metavar="PATH", help="also write the figures, with provenance, here")
    bench.add_argument("--seconds", type=float, default=2.0,
                       help="default mode: seconds per timing round (best of 3 rounds)")
    bench.add_argument("--worst-case", action="store_true",
                       help="instead: the adaptive worst case (default: APGD-CE, APGD-T, Square) beside AutoAttack standard")
    bench.add_argument("--n", type=int, default=300, help="--worst-case, --peers: test images (the first N)")
    bench.add_argument("--eps", type=float, nargs="+", default=None,
                       help="--worst-case: radii (default: the chapter-1 threat radius)")
    bench.add_argument("--norm", default="linf", choices=("linf", "l2"), help="--worst-case: threat-model norm")
    bench.add_argument("--steps", type=int, default=100, help="--worst-case: PGD steps of the worst-case members")
    bench.add_argument("--queries", type=int, default=5000, help="--worst-case: Square queries per image")
    bench.add_argument("--members", nargs="+", default=None, metavar="NAME",
                       help="--worst-case: the toolkit's members by name, in order (default: the chapters' default "
                            "ensemble), e.g. apgd_ce apgd_t square")
    bench.add_argument("--targets", type=int, default=None,
                       help="--worst-case: target classes of the apgd_t member (default: the default ensemble's)")
    bench.add_argument("--jumprelu", type=float, default=None, metavar="KAPPA",
                       help="--worst-case: score chapter 1's model retrofitted with JumpReLU at threshold KAPPA (a "
                            "defended network) instead of the model itself")
    bench.add_argument("--bpda", default=None, choices=("ce", "margin"),
                       help="--worst-case --jumprelu: put PGD through the retrofit's BPDA copy (ReLU's backward for "
                            "the jump) on this loss first in the ensemble, as the JumpReLU chapter does")
    args, extra = parser.parse_known_args(argv)
    if extra and args.command in ("run", "reference") and not any(e.startswith("-") for e in extra):
        args.chapters = [*args.chapters, *extra]  # chapters named after an option: `reference make --profile P ID`
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")

    if args.command == "run":
        if not args.chapters and not args.all:
            parser.error("name at least one chapter, or --all")
        _check_chapters_and_threads(parser, args)
        from .runner import ChapterFailed, run_chapters

        try:
            params = {name: parse_value(value) for name, value in args.param}
            profile = _profile_of(args.profile, params)
            run_chapters([] if args.all else args.chapters, profile, params, args.output_dir, args.log_output)
        except ValueError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        except ChapterFailed as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        return 0
    if args.command == "reference":
        return _reference(parser, args)
    if args.command == "params":
        from .chapters import get_chapter
        from .config import describe

        print(describe(get_chapter(args.chapter)))
        return 0
    if args.command == "results":
        from .results import list_results, results_dir

        rows = list_results()
        if not rows:
            print(f"no results under {results_dir()}; make some with: python -m robustness_book run CHAPTER")
        for row in rows:
            set_by_hand = ("?" if row.get("error") else
                           ", ".join(f"{k}={v!r}" for k, v in row["overridden"].items()) or "canonical")
            status = row.get("error") or f"{row['records']} records, commit {row['commit'] or '?'}"
            print(f"{row['profile']:>7}  {row['chapter']:<22} {set_by_hand:<40} {status}  {row['path']}")
        return 0
    if args.command == "models":
        from .zoo import models_command

        return models_command(args.action, args.name, args.profile)
    from .bench import main as bench_main

    if args.members is not None:
        from .evaluate import check_members

        try:
            check_members(args.members)
        except ValueError as err:
            parser.error(str(err))
    if args.targets is None:
        from .evaluate.members import DEFAULT_TARGETS

        args.targets = DEFAULT_TARGETS
    if args.jumprelu is not None and not (args.worst_case and 0 <= args.jumprelu < float("inf")):
        parser.error("--jumprelu KAPPA needs --worst-case and a finite threshold >= 0")
    if args.bpda is not None and args.jumprelu is None:
        parser.error("--bpda needs --jumprelu KAPPA (the BPDA copy is the retrofit's)")
    for flag in ("n", "steps", "queries", "targets"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag} must be a positive integer")
    if args.eps is not None and any(not 0 <= e < float("inf") for e in args.eps):
        parser.error("--eps values must be finite and >= 0")
    if args.worst_case and args.norm == "l2" and args.eps is None:
        parser.error("--norm l2 needs --eps (the default radius is the L∞ one)")
    modes = [flag for flag in ("worst_case", "peers", "page") if getattr(args, flag)] + (
        ["chapters"] if args.chapters is not None else [])
    if len(modes) > 1:
        parser.error(f"choose one mode: {', '.join('--' + m.replace('_', '-') for m in modes)}")
    unknown = [c for c in args.chapters or [] if c not in CHAPTER_IDS]
    if unknown:
        parser.error(f"unknown chapter(s) {', '.join(unknown)}; allowed: {', '.join(CHAPTER_IDS)}")
    if args.chapters is not None and args.profile == "auto":
        parser.error("--chapters needs a concrete profile: smoke, laptop or paper")
    if not args.seconds > 0:
        parser.error("--seconds must be a positive number")
    return bench_main(batch_size=args.batch_size, profile=args.profile, worst_case=args.worst_case, n=args.n,
                      eps=args.eps, norm=args.norm, steps=args.steps, queries=args.queries, chapters=args.chapters,
                      peers=args.peers, page=args.page, json_path=args.json, min_seconds=args.seconds,
                      note=args.note, members=args.members, targets=args.targets,
                      jumprelu=args.jumprelu, bpda=args.bpda)


def _reference(parser: argparse.ArgumentParser, args) -> int:
    from pathlib import Path

    from . import reference
    from .runner import ChapterFailed

    if args.chapters and args.action != "make":
        parser.error(f"reference {args.action} takes no chapters")
    _check_chapters_and_threads(parser, args)
    out = Path(args.out) if args.out else None
    try:
        if args.action == "make":
            reference.make_reference(args.profile or "auto", args.chapters, out)
        elif args.action == "glance":
            print(f"wrote {reference.book_glance(args.profile or 'auto')}")
        elif args.action == "check":
            folder = out or reference.default_reference_dir()
            checked = reference.check_references(folder)
            if not checked:
                print(f"no reference runs under {folder}; make one with: {reference.remake_command('laptop')}")
            for profile, prov in checked.items():
                print(f"{profile}: {len(prov['chapters'])} chapter(s), commit {(prov.get('git_commit') or '?')[:10]}, "
                      f"{len(prov['files'])} files checked")
        else:
            profile = args.profile or reference.SITE_PROFILE
            if profile == "auto":
                parser.error("reference site needs a concrete profile: smoke, laptop or paper")
            reference.build_site(Path(args.stage), Path(args.output), out, profile)
    except (ValueError, ChapterFailed) as err:  # ReferenceError is a ValueError
        print(f"error: {err}", file=sys.stderr)
        return 2 if isinstance(err, ValueError) else 1
    except subprocess.CalledProcessError as err:
        print(f"error: the site's build failed ({' '.join(err.cmd[:2])} exited with {err.returncode}); see above",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
