"""Chapter parameters: profiles, defaults and validation.

Every notebook has one papermill ``parameters`` cell whose values default to
``None`` ("take it from the profile"). :func:`resolve` checks each value and
fills the rest from the chapter's profile *before* any data is loaded or model
trained, so a wrong parameter fails in the first code cell with a message that
names it and its allowed values.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

PROFILES = ("smoke", "laptop", "paper", "auto")
PROFILE_HELP = {
    "smoke": "seconds-scale run that exercises every cell (what CI runs; numbers are not meaningful)",
    "laptop": "real results at reduced scale on a CPU (each chapter ≤ 15 min on 2 cores)",
    "paper": "the paper's own settings (meant for a GPU)",
    "auto": "paper if a GPU is visible, else laptop",
}


@dataclass(frozen=True)
class Param:
    """One chapter parameter: a checker and a one-line description."""

    kind: str
    help: str
    choices: tuple = ()
    #: The value may differ per data set: it resolves to ``{data set: value}`` for the run's data sets, and a
    #: reader gives either one value for all of them or a mapping (``{"cifar10": 8}``; the rest from the profile).
    per_dataset: bool = False

    @property
    def allowed(self) -> str:
        text = _KINDS[self.kind][1]
        if self.choices:
            text += ": " + ", ".join(map(repr, self.choices))
        return text + (", or a mapping {data set: such a value}" if self.per_dataset else "")

    def check(self, name: str, value: Any) -> Any:
        allowed = _KINDS[self.kind][1]
        if self.choices:
            allowed += ": " + ", ".join(map(repr, self.choices))
        ok, converted = _KINDS[self.kind][0](value, self.choices)
        if not ok:
            raise ValueError(f"parameter {name}={value!r} is invalid: expected {allowed}")
        return converted


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _pos_int(v, _):
    return isinstance(v, int) and not isinstance(v, bool) and v > 0, v


def _nonneg_int(v, _):
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0, v


def _pos_float(v, _):
    return _is_number(v) and v > 0, float(v) if _is_number(v) else v


def _nonneg_float(v, _):
    return _is_number(v) and v >= 0, float(v) if _is_number(v) else v


def _fraction(v, _):
    return _is_number(v) and 0 <= v <= 1, float(v) if _is_number(v) else v


def _pos_fraction(v, _):
    return _is_number(v) and 0 < v <= 1, float(v) if _is_number(v) else v


def _eps_linf(v, _):
    return _is_number(v) and 0 <= v <= 1, float(v) if _is_number(v) else v


def _eps_linf_list(v, _):
    ok = isinstance(v, (list, tuple)) and len(v) > 0 and all(_is_number(e) and 0 <= e <= 1 for e in v)
    return ok, [float(e) for e in v] if ok else v


def _nonneg_float_list(v, _):
    ok = isinstance(v, (list, tuple)) and len(v) > 0 and all(_is_number(e) and e >= 0 for e in v)
    return ok, [float(e) for e in v] if ok else v


def _pos_float_list(v, _):
    ok = isinstance(v, (list, tuple)) and len(v) > 0 and all(_is_number(e) and e > 0 for e in v)
    return ok, [float(e) for e in v] if ok else v


def _choice(v, choices):
    # same type too: 2.0 or True must not pass for the choice 2 (nor 1)
    return any(v == c and type(v) is type(c) for c in choices), v


def _subset(v, choices):
    ok = (isinstance(v, (list, tuple)) and len(v) > 0 and len(set(v)) == len(v)
          and all(isinstance(e, str) and e in choices for e in v))
    return ok, list(v) if ok else v


def _nonneg_int_list(v, _):
    ok = isinstance(v, (list, tuple)) and len(v) > 0 and all(_nonneg_int(e, None)[0] for e in v)
    return ok, list(v) if ok else v


def _pos_int_list(v, _):
    ok = isinstance(v, (list, tuple)) and len(v) > 0 and all(_pos_int(e, None)[0] for e in v)
    return ok, list(v) if ok else v


def _boolean(v, _):
    return isinstance(v, bool), v


_KINDS: dict[str, tuple[Callable, str]] = {
    "pos_int": (_pos_int, "an integer > 0"),
    "nonneg_int": (_nonneg_int, "an integer ≥ 0"),
    "pos_float": (_pos_float, "a number > 0"),
    "nonneg_float": (_nonneg_float, "a number ≥ 0"),
    "fraction": (_fraction, "a number in [0, 1]"),
    "pos_fraction": (_pos_fraction, "a number in (0, 1]"),
    "eps_linf": (_eps_linf, "an L∞ radius in [0, 1] (images live in [0, 1])"),
    "eps_linf_list": (_eps_linf_list, "a non-empty list of L∞ radii in [0, 1]"),
    "nonneg_float_list": (_nonneg_float_list, "a non-empty list of numbers ≥ 0"),
    "pos_float_list": (_pos_float_list, "a non-empty list of numbers > 0"),
    "choice": (_choice, "one of the listed values"),
    "subset": (_subset, "a non-empty list without repeats of the listed values"),
    "nonneg_int_list": (_nonneg_int_list, "a non-empty list of integers ≥ 0"),
    "pos_int_list": (_pos_int_list, "a non-empty list of integers > 0"),
    "bool": (_boolean, "True or False"),
}


@dataclass(frozen=True)
class ChapterSpec:
    """A chapter: its notebook, its parameters, and the value of each parameter per profile.

    The data set(s) a chapter runs on are a parameter (``dataset`` or ``datasets``), resolved first. A parameter
    marked ``per_dataset`` has a profile value that is either one value or a mapping keyed by every data set the
    chapter knows (the choices of ``dataset``/``datasets``).
    """

    name: str
    title: str
    notebook: str  # path relative to the repository root
    params: Mapping[str, Param]
    profiles: Mapping[str, Mapping[str, Any]]
    check: Callable[["RunConfig"], None] | None = None  # cross-parameter checks


class RunConfig(dict):
    """The resolved parameters of one run; values are also attributes (``cfg.epochs``)."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def markdown(self) -> str:
        """The page's banner: a MyST admonition naming the profile and device, with every parameter in a
        collapsed table (values a reader set are marked)."""
        profile = f"`{self['profile']}`"
        if self["requested_profile"] != self["profile"]:
            profile += f" (requested `{self['requested_profile']}`)"
        rows = "\n".join(f"| `{k}` | {_show(v)} | {'set' if k in self['overridden'] else 'profile'} |"
                         for k, v in self.items() if k not in _META)
        # the outer fence is longer than the inner one, as MyST requires for nesting
        return (f"::::{{admonition}} Profile {profile} on `{self['device']}`\n:class: note\n"
                f"{PROFILE_HELP[self['profile']]}.\n\n"
                f":::{{admonition}} The {len(self) - len(_META)} parameters of this run\n:class: dropdown\n"
                f"| parameter | value | from |\n|---|---|---|\n{rows}\n:::\n::::")


def _show(value: Any) -> str:
    if isinstance(value, dict):
        return "; ".join(f"{k}: `{v}`" for k, v in value.items())
    return f"`{value}`"


def describe(spec: "ChapterSpec") -> str:
    """Every parameter of a chapter with its help, allowed values and per-profile values (``robustness params``)."""
    lines = [f"{spec.name}: {spec.title}  (notebook {spec.notebook})", ""]
    for name, param in spec.params.items():
        lines.append(f"{name}  —  {param.help}")
        lines.append(f"    allowed: {param.allowed}")
        for profile, values in spec.profiles.items():
            lines.append(f"    {profile:>6}: {values[name]!r}")
        lines.append("")
    lines.append("Set one with: python -m robustness_book run " + spec.name + " --profile PROFILE -p NAME VALUE")
    return "\n".join(lines)


_DATASET_NAMES = {"mnist": "MNIST", "fashion_mnist": "Fashion-MNIST", "cifar10": "CIFAR-10"}


def images_limit(dataset: str, split: str) -> tuple[int, str]:
    """``(n, text)``: the ``split`` images of ``dataset`` a run can load here and how messages name them
    (``"the 60,000 MNIST training images"``; with the source when fewer than the official split, as with the
    offline mirror's CIFAR-10 test images). See :func:`robustness_book.data.images_available`."""
    from .data import images_available  # lazily: config stays free of torch at import

    n, note = images_available(dataset, split)
    text = f"the {n:,} {_DATASET_NAMES.get(dataset, dataset)} {'training' if split == 'train' else 'test'} images"
    return n, text + (f" available here: {note}" if note else "")


def check_counts(cfg: Mapping[str, Any], counts: Mapping[str | tuple[str, ...], str],
                 datasets: list[str] | None = None) -> None:
    """Refuse a count of images larger than its split holds, before any data is loaded (the rule of every
    chapter's ``_check``).

    ``counts`` maps a parameter, or a tuple of parameters whose sum is one block of images (``("train_size",
    "n_val")``), to its split (``"train"`` or ``"test"``). A per-data-set value is read for each of ``datasets``
    (default: the run's). The limit is :func:`images_limit`'s: the images the loader would actually give.
    """
    for d in datasets if datasets is not None else _run_datasets(cfg):
        for names, split in counts.items():
            names = (names,) if isinstance(names, str) else tuple(names)
            values = [(f"{n}[{d!r}]", cfg[n][d]) if isinstance(cfg[n], dict) else (n, cfg[n]) for n in names]
            total = sum(v for _, v in values)
            n, text = images_limit(d, split)
            if total <= n:
                continue
            if len(values) == 1:
                raise ValueError(f"parameter {values[0][0]}={total} exceeds {text}")
            raise ValueError(f"parameters {' + '.join(label for label, _ in values)} = {total:,} exceed {text}")


def _run_datasets(cfg: Mapping[str, Any]) -> list[str]:
    return list(cfg["datasets"]) if "datasets" in cfg else [cfg["dataset"]]


_META = ("profile", "requested_profile", "device", "overridden", "chapter")


def resolve_profile(profile: Any, cuda_available: bool | None = None) -> str:
    if profile not in PROFILES:
        raise ValueError(f"parameter profile={profile!r} is invalid: expected one of {', '.join(PROFILES)}")
    if profile != "auto":
        return profile
    if cuda_available is None:
        import torch

        cuda_available = torch.cuda.is_available()
    return "paper" if cuda_available else "laptop"


def _selected_datasets(spec: ChapterSpec, cfg: dict, defaults: Mapping[str, Any], given: Mapping[str, Any]):
    """The data set(s) of the run: ``datasets`` (a list) or ``dataset`` (one), resolved before anything else."""
    for name in ("datasets", "dataset"):
        if name in spec.params:
            value = given.get(name)
            cfg[name] = spec.params[name].check(name, defaults[name] if value is None else value)
            return name, (cfg[name] if name == "datasets" else [cfg[name]])
    return None, []


def _per_dataset(name: str, param: Param, default: Any, given: Any, selected: list[str], known: tuple,
                 one: bool) -> dict:
    """``{data set: checked value}`` from the profile's value (one for all, or a mapping) and the reader's."""
    def as_mapping(value, source):
        if not isinstance(value, dict):
            return {d: value for d in selected}
        unknown = sorted(set(value) - set(known))
        if unknown:
            raise ValueError(f"parameter {name}={value!r} names unknown data set(s) {', '.join(unknown)}; "
                             f"allowed keys: {', '.join(known)}")
        unused = [d for d in value if d not in selected]
        if unused and source == "given":
            # it would be dropped, yet counted as set by hand (and so file the run under an override hash)
            run = f"dataset={selected[0]!r}" if one else f"datasets={selected!r}"
            raise ValueError(f"parameter {name}={value!r} sets data set(s) {', '.join(unused)}, which this run "
                             f"does not use ({run})")
        missing = [d for d in selected if d not in value]
        if missing and source == "profile":
            raise ValueError(f"the profile has no value of {name} for data set(s) {', '.join(missing)}")
        return {d: value[d] for d in selected if d in value}

    merged = as_mapping(default, "profile")
    if given is not None:
        merged.update(as_mapping(given, "given"))
    return {d: param.check(name if one else f"{name}[{d!r}]", merged[d]) for d in selected}


def resolve(spec: ChapterSpec, profile: str = "auto", **given: Any) -> RunConfig:
    """Validate ``given`` (``None`` = from the profile) and return the full run configuration.

    Raises ``ValueError`` naming the parameter and its allowed values for an
    unknown profile, an unknown parameter, or a value out of range. A per-data-set
    parameter resolves to ``{data set: value}`` when the chapter runs on several
    data sets (``datasets``) and to the one value when it runs on one (``dataset``).
    """
    unknown = sorted(set(given) - set(spec.params))
    if unknown:
        raise ValueError(f"unknown parameter(s) {', '.join(unknown)} for chapter {spec.name!r}; "
                         f"allowed: {', '.join(spec.params)}")
    resolved = resolve_profile(profile)
    import torch

    cfg = RunConfig(chapter=spec.name, requested_profile=profile, profile=resolved,
                    device="cuda" if torch.cuda.is_available() else "cpu",
                    overridden=sorted(k for k, v in given.items() if v is not None))
    defaults = spec.profiles[resolved]
    selector, selected = _selected_datasets(spec, cfg, defaults, given)
    known = spec.params[selector].choices if selector else ()
    for name, param in spec.params.items():
        if name == selector:
            continue
        value = given.get(name)
        if param.per_dataset:
            per = _per_dataset(name, param, defaults[name], value, selected, known, selector == "dataset")
            cfg[name] = per if selector == "datasets" else per[selected[0]]
        else:
            cfg[name] = param.check(name, defaults[name] if value is None else value)
    ordered = RunConfig({k: cfg[k] for k in (*_META, *spec.params)})
    if spec.check is not None:
        spec.check(ordered)
    return ordered


#: How papermill's ``injected-parameters`` cell begins (its Python translator's comment line).
_INJECTED_HEADER = "# Parameters\n"


def _injected_names(namespace: Mapping[str, Any]) -> set[str]:
    """The names assigned by papermill's injected cell, from IPython's input history ``In``."""
    import ast

    names: set[str] = set()
    for source in namespace.get("In") or []:
        if isinstance(source, str) and source.startswith(_INJECTED_HEADER):
            try:
                tree = ast.parse(source)
            except SyntaxError:
                continue
            names.update(target.id for node in tree.body if isinstance(node, ast.Assign)
                         for target in node.targets if isinstance(target, ast.Name))
    return names


def resolve_notebook(spec: ChapterSpec, namespace: Mapping[str, Any]) -> RunConfig:
    """:func:`resolve` from a notebook's namespace (``globals()``), for the first code cell after the parameters.

    Papermill run directly only warns about a name the parameters cell lacks ("Passed unknown parameter") and
    injects it anyway; the run would then finish with the profile's value and write over the canonical results.
    Here a name papermill injected that is not a parameter of the chapter stops the run, as the CLI does. (Read
    from the injected cell's source, so a live notebook whose cells are rerun in any order is never refused.)
    """
    unknown = sorted(_injected_names(namespace) - set(spec.params) - {"profile"})
    if unknown:
        raise ValueError(f"unknown parameter(s) {', '.join(unknown)} for chapter {spec.name!r}; "
                         f"allowed: profile, {', '.join(spec.params)}")
    return resolve(spec, profile=namespace.get("profile", "auto"), **{name: namespace[name] for name in spec.params})
