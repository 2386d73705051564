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


def _eps_linf(v, _):
    return _is_number(v) and 0 <= v <= 1, float(v) if _is_number(v) else v


def _eps_linf_list(v, _):
    ok = isinstance(v, (list, tuple)) and len(v) > 0 and all(_is_number(e) and 0 <= e <= 1 for e in v)
    return ok, [float(e) for e in v] if ok else v


def _nonneg_float_list(v, _):
    ok = isinstance(v, (list, tuple)) and len(v) > 0 and all(_is_number(e) and e >= 0 for e in v)
    return ok, [float(e) for e in v] if ok else v


def _choice(v, choices):
    return v in choices, v


def _subset(v, choices):
    ok = (isinstance(v, (list, tuple)) and len(v) > 0 and len(set(v)) == len(v)
          and all(isinstance(e, str) and e in choices for e in v))
    return ok, list(v) if ok else v


def _nonneg_int_list(v, _):
    ok = isinstance(v, (list, tuple)) and len(v) > 0 and all(_nonneg_int(e, None)[0] for e in v)
    return ok, list(v) if ok else v


def _boolean(v, _):
    return isinstance(v, bool), v


_KINDS: dict[str, tuple[Callable, str]] = {
    "pos_int": (_pos_int, "an integer > 0"),
    "nonneg_int": (_nonneg_int, "an integer ≥ 0"),
    "pos_float": (_pos_float, "a number > 0"),
    "nonneg_float": (_nonneg_float, "a number ≥ 0"),
    "eps_linf": (_eps_linf, "an L∞ radius in [0, 1] (images live in [0, 1])"),
    "eps_linf_list": (_eps_linf_list, "a non-empty list of L∞ radii in [0, 1]"),
    "nonneg_float_list": (_nonneg_float_list, "a non-empty list of numbers ≥ 0"),
    "choice": (_choice, "one of the listed values"),
    "subset": (_subset, "a non-empty list without repeats of the listed values"),
    "nonneg_int_list": (_nonneg_int_list, "a non-empty list of integers ≥ 0"),
    "bool": (_boolean, "True or False"),
}


@dataclass(frozen=True)
class ChapterSpec:
    """A chapter: its notebook, its parameters, and the value of each parameter per profile.

    A profile value may be a dict keyed by dataset name (e.g. an eps per data set);
    it is then looked up with the run's ``dataset``.
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
        """A short block for the top of the page: profile and every parameter value."""
        head = f"**Profile:** `{self['profile']}`"
        if self["requested_profile"] != self["profile"]:
            head += f" (requested `{self['requested_profile']}`)"
        head += f" — {PROFILE_HELP[self['profile']]}. **Device:** `{self['device']}`."
        rows = [f"`{k}` = `{v}`" + (" (set)" if k in self["overridden"] else "")
                for k, v in self.items() if k not in _META]
        return head + "\n\n**Parameters:** " + "; ".join(rows) + "."


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


def resolve(spec: ChapterSpec, profile: str = "auto", **given: Any) -> RunConfig:
    """Validate ``given`` (``None`` = from the profile) and return the full run configuration.

    Raises ``ValueError`` naming the parameter and its allowed values for an
    unknown profile, an unknown parameter, or a value out of range.
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
    # Explicit values first, so that per-dataset defaults can look up the chosen dataset.
    for name, param in spec.params.items():
        if given.get(name) is not None:
            cfg[name] = param.check(name, given[name])
    for name, param in spec.params.items():
        if name in cfg:
            continue
        value = defaults[name]
        if isinstance(value, dict):
            value = value[cfg["dataset"]]
        cfg[name] = param.check(name, value)
    ordered = RunConfig({k: cfg[k] for k in (*_META, *spec.params)})
    if spec.check is not None:
        spec.check(ordered)
    return ordered
