"""The claims register and three-way verdicts.

The course judges claims of the articles it started from. Each claim is registered in
``data/claims.toml`` with its source (article title and site), the scope the source states, the
lessons and records that test it, its verdict rule (fixed before looking at the numbers) and
what the course can measure here. This module reads that register and turns measurements
into verdicts:

- :func:`load` / :func:`get`: the register, validated (:class:`RegisterError` says what is
  wrong and where).
- :func:`interval`: an interval from repeated measurements, the interquartile range or a
  percentile bootstrap interval of the median.
- :func:`ratio_interval`: the interval of a ratio of two such measurements; :func:`wilson`:
  the interval of a proportion (k of n bugs found).
- :func:`judge`: *holds*, *fails* or *can't tell* from an interval and the claim's threshold;
  a claim out of the course's reach is *not measured here: needs X*, whatever the numbers.
- :func:`compare`: which of two measurements is better, or a tie when their intervals overlap.
- :func:`combine`: one verdict from several (datasets, sizes, competitors).

Only the standard library and NumPy.
"""

from __future__ import annotations

import math
import os
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

#: The three verdicts of a measured claim, and the one of a claim out of reach.
HOLDS, FAILS, CANT_TELL, NOT_HERE = "holds", "fails", "can't tell", "not measured here"
NOT_MEASURED = "not measured"  # in scope, but no records (the lesson did not run)
REGISTER_NAME = "claims.toml"
_REQUIRED = ("id", "claim", "sources", "source_scope", "lessons", "records", "rule",
             "scope_here", "measurable_here")


class RegisterError(ValueError):
    """The claims register is missing, does not parse or has an invalid entry."""


@dataclass(frozen=True)
class Claim:
    """One entry of the register (see ``data/claims.toml`` for the meaning of each field).

    ``threshold``/``holds_if`` are None for claims whose rule has no single number."""

    id: str
    claim: str
    sources: tuple[dict, ...]
    source_scope: str
    lessons: tuple[str, ...]
    records: tuple[str, ...]
    rule: str
    scope_here: str
    measurable_here: bool
    needs: str = ""
    threshold: float | None = None
    holds_if: str | None = None

    def cite(self) -> str:
        """The sources as text, joined by ``"; "``: ``"title, site"``, or ``"title (seed
        file NNN_...)"`` when the stored copy names no site."""
        return "; ".join(f"{s['title']}, {s['site']}" if not s["site"].startswith("not named")
                         else f"{s['title']} (site not named; seed file {s.get('seed', '?')})"
                         for s in self.sources)


@dataclass(frozen=True)
class Verdict:
    """A judged claim: ``verdict`` is one of :data:`HOLDS`, :data:`FAILS`, :data:`CANT_TELL`,
    :data:`NOT_HERE` or :data:`NOT_MEASURED`; ``interval`` (low, high) of the measured
    quantity, None when nothing was judged; ``reason`` says why, in words."""

    claim_id: str
    verdict: str
    interval: tuple[float, float] | None
    reason: str

    def __str__(self) -> str:
        return f"{self.verdict}: {self.reason}" if self.reason else self.verdict


def register_path() -> Path:
    """``claims.toml`` in the course's data folder (:func:`course_lib.data.data_dir`, which
    honours ``$COURSE_DATA_DIR``: the folder the Colab setup downloads)."""
    from course_lib import data

    return data.data_dir() / REGISTER_NAME


def _entry(raw: dict, where: str) -> Claim:
    missing = [k for k in _REQUIRED if k not in raw]
    if missing:
        raise RegisterError(f"{where}: missing fields {missing}; every claim needs {list(_REQUIRED)}")
    unknown = sorted(set(raw) - set(Claim.__dataclass_fields__))
    if unknown:
        raise RegisterError(f"{where}: unknown fields {unknown}")
    for key in ("id", "claim", "source_scope", "rule", "scope_here"):
        if not isinstance(raw[key], str) or not raw[key].strip():
            raise RegisterError(f"{where}: {key!r} must be a non-empty string")
    if not isinstance(raw["measurable_here"], bool):
        raise RegisterError(f"{where}: 'measurable_here' must be true or false")
    if not raw["measurable_here"] and not str(raw.get("needs", "")).strip():
        raise RegisterError(f"{where}: a claim not measurable here must say what it 'needs'")
    sources = raw["sources"]
    if not sources or not all(isinstance(s, dict) and str(s.get("title", "")).strip()
                              and str(s.get("site", "")).strip() for s in sources):
        raise RegisterError(f"{where}: 'sources' must list at least one {{title, site}}")
    for key in ("lessons", "records"):
        if not raw[key] or not all(isinstance(v, str) and v for v in raw[key]):
            raise RegisterError(f"{where}: {key!r} must be a non-empty list of strings")
    bad = [r for r in raw["records"] if "/" not in r]
    if bad:
        raise RegisterError(f"{where}: records must read '<lesson>/<metric>', got {bad}")
    has_t, has_h = raw.get("threshold") is not None, raw.get("holds_if") is not None
    if has_t != has_h or (has_h and raw["holds_if"] not in ("above", "below")):
        raise RegisterError(f"{where}: 'threshold' and 'holds_if' ('above' or 'below') "
                            "go together")
    return Claim(**{**raw, "sources": tuple(raw["sources"]), "lessons": tuple(raw["lessons"]),
                    "records": tuple(raw["records"]),
                    "threshold": float(raw["threshold"]) if has_t else None})


def load(path: str | os.PathLike | None = None) -> dict[str, Claim]:
    """The register as ``{id: Claim}``, in file order.

    Raises:
        RegisterError: the file is missing (says how to restore it), is not valid TOML, or an
            entry lacks a field, has an unknown one, an empty text, ``measurable_here = false``
            without ``needs``, or a duplicate id. The message names the entry.
    """
    path = Path(path) if path is not None else register_path()
    if not path.is_file():
        raise RegisterError(f"the claims register {path} is missing: restore it with "
                            f"`git checkout -- data/{REGISTER_NAME}` (on Colab, run the "
                            "lesson's setup cell, which downloads it)")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise RegisterError(f"{path} is not valid TOML: {exc}") from None
    out: dict[str, Claim] = {}
    for number, entry in enumerate(raw.get("claim", []), 1):
        claim = _entry(entry, f"{path.name}, claim {number} ({entry.get('id', 'no id')})")
        if claim.id in out:
            raise RegisterError(f"{path.name}: the id {claim.id!r} appears twice")
        out[claim.id] = claim
    if not out:
        raise RegisterError(f"{path} lists no [[claim]]")
    return out


def get(claim_id: str, register: dict[str, Claim] | None = None) -> Claim:
    """One claim of the register (default :func:`load`). Raises KeyError listing the ids."""
    register = load() if register is None else register
    if claim_id not in register:
        raise KeyError(f"no claim {claim_id!r} in the register; the ids: {sorted(register)}")
    return register[claim_id]


def _finite(samples, name="samples"):
    import numpy as np

    values = np.asarray(samples, dtype=float).ravel()
    if values.size == 0 or not np.isfinite(values).all():
        raise ValueError(f"{name} must be a non-empty sequence of finite numbers, got {samples!r}")
    return values


def interval(samples: Sequence[float], *, method: str = "iqr", level: float = 0.95,
             n_boot: int = 2000, seed: int = 0) -> tuple[float, float]:
    """The spread of repeated measurements of one quantity, as ``(low, high)``.

    Args:
        samples: the repeats (e.g. step times in s), finite.
        method: ``"iqr"``: first and third quartiles (NumPy's linear interpolation), the
            spread lesson 09 records; ``"bootstrap"``: percentile bootstrap interval of the
            median at ``level`` from ``n_boot`` resamples (Efron & Tibshirani, *An
            Introduction to the Bootstrap*, 1993, ch. 13), reproducible with ``seed``.

    Raises:
        ValueError: empty or non-finite samples, an unknown method, a level outside (0, 1).
    """
    import numpy as np

    values = _finite(samples)
    if method == "iqr":
        low, high = np.percentile(values, [25, 75])
    elif method == "bootstrap":  # the one bootstrap of the course: lesson 09's too
        from course_lib.bench import bootstrap_median_interval

        low, high = bootstrap_median_interval(values, confidence=level, resamples=n_boot,
                                              seed=seed)
    else:
        raise ValueError(f"method must be 'iqr' or 'bootstrap', got {method!r}")
    return float(low), float(high)


def ratio_interval(numerator: tuple[float, float], denominator: tuple[float, float]
                   ) -> tuple[float, float]:
    """The interval of ``numerator / denominator`` from the intervals of two positive
    quantities (e.g. two step times' quartiles): ``(num_low / den_high, num_high / den_low)``,
    the widest ratio the two spreads allow. Raises ValueError for a bound <= 0 or
    ``low > high``."""
    for name, (low, high) in (("numerator", numerator), ("denominator", denominator)):
        if not (0 < low <= high) or not math.isfinite(high):
            raise ValueError(f"{name} interval must be 0 < low <= high, got {(low, high)}")
    return numerator[0] / denominator[1], numerator[1] / denominator[0]


def wilson(successes: int, n: int, *, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a proportion ``successes / n`` (95 % for ``z=1.96``; Wilson,
    JASA 22, 1927). Raises ValueError unless ``0 <= successes <= n`` and ``n >= 1``."""
    if not (n >= 1 and 0 <= successes <= n):
        raise ValueError(f"wilson(): need 0 <= successes <= n and n >= 1, got {successes}, {n}")
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def judge(claim: Claim, measured: tuple[float, float] | None, *, threshold: float | None = None,
          holds_if: str | None = None, what: str = "", missing: str = "") -> Verdict:
    """The verdict of one claim from the interval of the quantity its rule names.

    The claim holds when the whole interval is on the claim's side of the threshold
    (``holds_if="above"``: ``low > threshold``; ``"below"``: ``high < threshold``), fails when
    the whole interval is on the other side, and is *can't tell* when it contains the
    threshold. A claim with ``measurable_here = false`` gets :data:`NOT_HERE` ("not measured
    here: needs X") whatever ``measured`` is: it is never judged from a smaller proxy.

    Args:
        claim: a register entry (:func:`get`).
        measured: ``(low, high)`` of the quantity (:func:`interval`, :func:`ratio_interval`),
            or None when there are no records: the verdict is :data:`NOT_MEASURED` with the
            reason ``missing``.
        threshold / holds_if: default to the claim's own (the register's rule).
        what: a name for the quantity in the reason, e.g. ``"torch / jax step time"``.

    Raises:
        ValueError: no threshold (the claim has none and none was given), an unknown
            ``holds_if``, or an interval with ``low > high`` or a NaN bound.
    """
    if not claim.measurable_here:
        return Verdict(claim.id, NOT_HERE, None, f"needs {claim.needs}")
    if measured is None:
        return Verdict(claim.id, NOT_MEASURED, None, missing or "no records")
    threshold = claim.threshold if threshold is None else threshold
    holds_if = claim.holds_if if holds_if is None else holds_if
    if threshold is None or holds_if not in ("above", "below"):
        raise ValueError(f"judge({claim.id}): needs a threshold and holds_if 'above'/'below', "
                         f"got {threshold!r}, {holds_if!r}")
    low, high = (float(v) for v in measured)
    if not (low <= high):  # also catches NaN
        raise ValueError(f"judge({claim.id}): interval must be low <= high, got {measured}")
    above, below = low > threshold, high < threshold
    verdict = CANT_TELL if not (above or below) else (
        HOLDS if (above and holds_if == "above") or (below and holds_if == "below") else FAILS)
    side = {"above": ">", "below": "<"}[holds_if]
    name = what or "the measured quantity"
    return Verdict(claim.id, verdict, (low, high),
                   f"{name} in [{low:.3g}, {high:.3g}]; the claim needs it {side} {threshold:g}")


def compare(a: tuple[float, float], b: tuple[float, float], *, better: str = "lower") -> str:
    """``"a"`` or ``"b"`` when one interval lies wholly on the better side of the other,
    ``"tie"`` when they overlap (touching counts as overlapping). Raises ValueError for an
    unknown ``better`` or an interval with ``low > high``."""
    if better not in ("lower", "higher"):
        raise ValueError(f"better must be 'lower' or 'higher', got {better!r}")
    for low, high in (a, b):
        if not (low <= high):
            raise ValueError(f"compare(): intervals must be low <= high, got {a}, {b}")
    if a[1] < b[0]:
        return "a" if better == "lower" else "b"
    if b[1] < a[0]:
        return "b" if better == "lower" else "a"
    return "tie"


def combine(claim: Claim, verdicts: Iterable[Verdict]) -> Verdict:
    """One verdict from the verdicts of several cases (datasets, sizes, competitors) of a
    general claim: fails if any case fails (one clear counterexample refutes it), holds if
    every case holds, else can't tell; not measured (here) when no case was judged. The
    reason counts the cases, e.g. ``"holds in 2 of 3 cases, can't tell in 1"``."""
    verdicts = list(verdicts)
    if not claim.measurable_here:
        return Verdict(claim.id, NOT_HERE, None, f"needs {claim.needs}")
    judged = [v for v in verdicts if v.verdict in (HOLDS, FAILS, CANT_TELL)]
    if not judged:
        return Verdict(claim.id, NOT_MEASURED, None,
                       "; ".join(v.reason for v in verdicts if v.reason) or "no records")
    counts = {k: sum(v.verdict == k for v in judged) for k in (HOLDS, FAILS, CANT_TELL)}
    verdict = FAILS if counts[FAILS] else HOLDS if counts[HOLDS] == len(judged) else CANT_TELL
    parts = [f"{k} in {n}" for k, n in counts.items() if n]
    return Verdict(claim.id, verdict, None, f"{', '.join(parts)} of {len(judged)} cases")
