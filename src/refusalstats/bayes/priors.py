"""Priors of the hierarchical model: defaults, user overrides and their PyMC distributions."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["DEFAULT_PRIORS"]

#: Default priors (logit scale). Keys: "Intercept", "fixed" (every other fixed effect),
#: "sd" (every group standard deviation). Override any of them, a single fixed effect by
#: its column name (e.g. ``"task[T.politeness]"``) or a single group sd by its term
#: (e.g. ``"sd(persona:model)"``) through ``priors=``.
DEFAULT_PRIORS: dict[str, tuple] = {
    "Intercept": ("normal", 0.0, 5.0),
    "fixed": ("normal", 0.0, 2.5),
    "sd": ("exponential", 1.0),
}

_FIXED_FAMILIES = {"normal": ("mu", "sigma"), "student_t": ("nu", "mu", "sigma")}
_SD_FAMILIES = {
    "halfnormal": ("sigma",),
    "exponential": ("lam",),
    "halfstudent_t": ("nu", "sigma"),
    "halfcauchy": ("beta",),
}


# --------------------------------------------------------------------------- priors
def _prior_spec(key: str, value: Any, families: Mapping[str, tuple[str, ...]]) -> tuple[str, dict]:
    """Normalise a prior given as ``("normal", 0, 2.5)`` or ``{"dist": "normal", ...}``."""
    allowed = ", ".join(f"({f!r}, {', '.join(p)})" for f, p in families.items())
    if isinstance(value, Mapping):
        value = dict(value)
        dist = value.pop("dist", None)
        params = value
    elif isinstance(value, (tuple, list)) and value and isinstance(value[0], str):
        dist = value[0]
        names = families.get(str(value[0]).lower())
        if names is None:
            params = {}
        else:
            if len(value) - 1 != len(names):
                raise ValueError(
                    f"prior {key!r}: {value[0]!r} takes {len(names)} parameter(s) {names}, "
                    f"got {len(value) - 1}: {tuple(value)}; e.g. {key!r}: {allowed.split(', (')[0]}"
                )
            params = dict(zip(names, value[1:]))
    else:
        raise ValueError(
            f"prior {key!r} must be a tuple like ('normal', 0, 2.5) or a dict like "
            f"{{'dist': 'normal', 'mu': 0, 'sigma': 2.5}}; got {value!r}"
        )
    if not isinstance(dist, str) or dist.lower() not in families:
        raise ValueError(f"prior {key!r}: distribution {dist!r} is not available here; use one of {allowed}")
    dist = dist.lower()
    names = families[dist]
    if set(params) != set(names):
        raise ValueError(f"prior {key!r}: {dist!r} needs parameters {names}, got {sorted(params)}")
    out = {}
    for n in names:
        try:
            v = float(params[n])
        except (TypeError, ValueError):
            raise ValueError(f"prior {key!r}: parameter {n}={params[n]!r} is not a number") from None
        if not np.isfinite(v):
            raise ValueError(f"prior {key!r}: parameter {n}={v} must be finite")
        if n != "mu" and v <= 0:
            raise ValueError(f"prior {key!r}: parameter {n} must be > 0, got {v}")
        out[n] = v
    return dist, out


def _resolve_priors(
    priors: Mapping[str, Any] | None, fixed_names: Sequence[str], term_names: Sequence[str]
) -> dict[str, tuple[str, dict]]:
    """Resolve user priors to one spec per parameter: keys ``Intercept``, each fixed name,
    ``sd(<term>)``."""
    priors = dict(priors or {})
    sd_keys = {f"sd({t})": t for t in term_names}
    valid = {"Intercept", "fixed", "sd", *fixed_names, *sd_keys}
    unknown = [k for k in priors if k not in valid]
    if unknown:
        raise ValueError(
            f"unknown prior key(s) {unknown}; valid keys are 'Intercept', 'fixed', 'sd', a fixed "
            f"effect {[n for n in fixed_names if n != 'Intercept']} or a group sd {list(sd_keys)}"
        )
    merged = {**DEFAULT_PRIORS, **priors}
    out: dict[str, tuple[str, dict]] = {}
    for name in fixed_names:
        if name == "Intercept":
            out[name] = _prior_spec("Intercept", merged["Intercept"], _FIXED_FAMILIES)
        else:
            key = name if name in priors else "fixed"
            out[name] = _prior_spec(key, merged[key], _FIXED_FAMILIES)
    for key in sd_keys:
        k = key if key in priors else "sd"
        out[key] = _prior_spec(k, merged[k], _SD_FAMILIES)
    return out


def _fixed_rv(pm, name, dist, p, dims):
    if dist == "normal":
        return pm.Normal(name, mu=p["mu"], sigma=p["sigma"], dims=dims)
    return pm.StudentT(name, nu=p["nu"], mu=p["mu"], sigma=p["sigma"], dims=dims)


def _sd_rv(pm, name, dist, p):
    if dist == "halfnormal":
        return pm.HalfNormal(name, sigma=p["sigma"])
    if dist == "exponential":
        return pm.Exponential(name, lam=p["lam"])
    if dist == "halfstudent_t":
        return pm.HalfStudentT(name, nu=p["nu"], sigma=p["sigma"])
    return pm.HalfCauchy(name, beta=p["beta"])


