"""Validity checks shown next to each robust number (evaluation protocol, "Validity checks").

:func:`check` reads the per-example results and their summary and returns one row per
(summary row, flag). Every check uses only what the results hold; a grid that wants a check
must include the cells it compares (a bare classifier, several eps, a black-box attack, a
stronger setting). A check whose cells are absent yields nothing; the codes of the checks
that found something to compare are listed in ``flags.attrs["checked"]``, and every other
code of CHECKS is in ``flags.attrs["not_checked"]`` with the reason, which the report
prints: a check that could not run is never shown as passed.

Flags (code: when; which summary rows carry it)

``attack-weak``
    The bare classifier (purifier ``none``, same dataset, classifier, threat, eps and
    attack) keeps more than ``attack_works`` robust accuracy (5 %; 10 % when it was
    measured on fewer than ``small_n`` = 100 examples, where one or two lucky examples
    already make 5 %). Every row of that attack's group is flagged, the bare one included.
``eps-nonmonotone``
    Same dataset, classifier, defence, attack and attack parameters except ``eps`` (and
    ``step_size``, which grids commonly scale with eps): robust accuracy at a larger eps
    exceeds that at a smaller eps by more than the gap tolerance. The larger eps is flagged.
``eps-unbounded``
    An eps that allows any image (Linf >= 1 on [0, 1] images; L2 >= 64, the diameter of
    [0, 1]^d for d <= 4096 pixel values, e.g. CIFAR's 3072) leaves more than
    ``attack_works`` robust accuracy: gradient masking, or an attack too short to travel.
``bb-stronger``
    Same dataset, classifier, defence, threat and eps: a black-box attack (a plugin with
    capability ``black_box``, or without ``needs_gradients``) is lower than a white-box
    gradient attack (``needs_gradients``, gradient ``exact``; BPDA counts) by more than the
    gap tolerance. The white-box number is flagged (likely gradient masking).
``no-eot``
    The defence is random (its purifier plugin is ``stochastic``, or the clean or adversarial
    prediction of some example differs between evaluation runs) but the gradient attack took
    one sample per gradient: pgd/bpda with eot 1, autoattack whose effective eot (0 means the
    version's own: 20 for ``rand``, else 1) is 1. Greybox gradients (the classifier alone)
    and query attacks do not use EOT and are not flagged.
``not-converged``
    Cells equal except ``steps``, ``eot`` and ``queries``: a setting at least as strong in
    all three and stronger in one lowers robust accuracy by more than the gap tolerance.
    The weaker number is flagged with the lowest stronger one.
``attack-null``
    The attack did nothing: pgd/bpda with 0 steps or step size 0, or an attack whose mean
    perturbation on the examples that stayed correct is 0 (under 0.1 % of eps) while eps > 0.
    AutoAttack and Square return an example they do not fool unperturbed (as upstream
    AutoAttack does), so for them a zero perturbation is not evidence and is not checked.
``small-perturbation``
    pgd/bpda whose mean perturbation (in the threat's norm) on the examples that stayed
    correct is under ``small_perturbation`` (a quarter) of eps: a robust number measured
    against an attack that never used its budget.
``non-finite``
    Some row of the number (worst-of rows included) has a clean or adversarial prediction
    of -1: its logits held a non-finite value. Counted as wrong, but a defence that fails
    numerically is not robust, and the count must show. Checked when the results were
    written by a harness that records it (a ``grad_nonfinite`` column, or a -1 seen).
``gradient-masked``
    The attack met a non-finite gradient (``grad_nonfinite`` > 0) on some example; those
    steps were zeroed, so the attack was partly blind there: a silently zeroed gradient is
    gradient masking. Checked where a gradient attack recorded ``grad_nonfinite``.

The gap tolerance is ``max(gap, 1 / n)``: 3 accuracy points, but at least one example of
the smaller of the two samples compared. The compared cells evaluate the same examples
(same ``data_seed``), so their difference is paired; independent confidence intervals
would hide real violations at the small n of a quick grid, and one example is the
smallest difference that n can show.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from .aggregate import GROUP_KEYS

FLAG_COLUMNS: tuple[str, ...] = (*GROUP_KEYS, "flag", "message")

#: (code, short description), in the order checks run and flags are listed.
CHECKS: tuple[tuple[str, str], ...] = (
    ("attack-weak", "the bare classifier under the same attack goes to ~0%"),
    ("eps-nonmonotone", "robust accuracy does not rise with eps"),
    ("eps-unbounded", "an unbounded eps gives ~0%"),
    ("bb-stronger", "no black-box attack beats a white-box one"),
    ("no-eot", "a random defence is attacked with EOT"),
    ("not-converged", "more steps/EOT/queries do not lower the number"),
    ("attack-null", "the attack perturbs its inputs"),
    ("small-perturbation", "the attack uses its budget on robust examples"),
    ("non-finite", "no prediction came from non-finite logits"),
    ("gradient-masked", "the attack's gradients were finite"),
)
#: Why a check did not run, when it had nothing to look at.
NOT_CHECKED: dict[str, str] = {
    "attack-weak": "no bare classifier (purifier none) was attacked with the same attack",
    "eps-nonmonotone": "no defence was attacked at two eps with otherwise equal settings",
    "eps-unbounded": "no attack had an unbounded eps (linf >= 1, l2 >= 64)",
    "bb-stronger": "no defence was attacked both black-box and white-box at the same eps",
    "no-eot": "no gradient attack on a defence known or seen to be random",
    "not-converged": "no defence was attacked at two strengths (steps/EOT/queries) of one attack",
    "attack-null": "no attack recorded perturbations it can be judged by",
    "small-perturbation": "no iterative attack (capability iterative) recorded perturbations on examples that stayed correct",
    "non-finite": "the results predate non-finite predictions being recorded (no grad_nonfinite column)",
    "gradient-masked": "no gradient attack recorded its non-finite gradients (grad_nonfinite column)",
}
FLAG_ORDER = {code: i for i, (code, _) in enumerate(CHECKS)}

# What makes an attack stronger (each plugin's `strength` hook says which apply to it).
_STRENGTH = ("steps", "eot", "queries")


@dataclass(frozen=True)
class Tolerances:
    attack_works: float = 0.05  # max robust accuracy of the bare classifier / unbounded eps
    attack_works_small: float = 0.10  # the same below small_n examples
    small_n: int = 100
    gap: float = 0.03  # accuracy difference that counts as a violation (see gap())
    zero_perturbation: float = 1e-3  # mean perturbation below this fraction of eps is "none"
    small_perturbation: float = 0.25  # ... below this fraction of eps is "barely used"
    unbounded_linf: float = 1.0
    unbounded_l2: float = 64.0

    def works(self, n: int) -> float:
        return self.attack_works if n >= self.small_n else self.attack_works_small

    def gap_for(self, *ns: int) -> float:
        return max(self.gap, 1.0 / max(1, min(ns)))

    def exceeds(self, difference: float, *ns: int) -> bool:
        """Whether an accuracy difference is larger than the gap tolerance (rounding aside)."""
        return difference > self.gap_for(*ns) + 1e-9


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _spec(kind: str, name: Any) -> Any:
    """The plugin's declaration, or None for one not installed here (then nothing is assumed).
    Every check reads capabilities and hooks: no plugin is named here."""
    from harness import registry

    try:
        return registry.get(kind, name)
    except Exception:  # noqa: BLE001 (a plugin unknown here)
        return None


def _capabilities(kind: str, name: Any) -> frozenset[str]:
    spec = _spec(kind, name)
    return spec.capabilities if spec is not None else frozenset()


def _parse(cell_json: Any) -> dict[str, Any] | None:
    try:
        cell = json.loads(cell_json)
    except (TypeError, ValueError):
        return None
    return cell if isinstance(cell, dict) and cell else None


def _group_info(info: pd.DataFrame) -> pd.DataFrame:
    """Per summary group (:attr:`analysis.aggregate.Aggregate.info`): plugin names and the
    attack's parameters from a cell's JSON, beside the facts the aggregation measured."""
    info = info.copy()
    cells = [_parse(c) for c in info["cell_json"]]
    info["attack_params"] = [(c or {}).get("attack", {}).get("params") if c else None for c in cells]
    info["purifier"] = [
        (c["purifier"]["name"] if c and "purifier" in c else p) for c, p in zip(cells, info["purifier"])]
    info["attack"] = [
        (c["attack"]["name"] if c and "attack" in c else a) for c, a in zip(cells, info["attack"])]
    return info.drop(columns=["cell_json"])


def _key(row: pd.Series) -> tuple:
    return tuple(row[k] for k in GROUP_KEYS)


def _without(params: dict[str, Any] | None, drop: tuple[str, ...]) -> str | None:
    if params is None:
        return None
    return json.dumps({k: v for k, v in params.items() if k not in drop}, sort_keys=True)


def _effective_eot(attack: str, p: dict[str, Any]) -> int:
    """Purifications averaged per gradient (the attack's `eot` hook)."""
    spec = _spec("attack", attack)
    return max(int(spec.eot(p)), 1) if spec is not None else max(int(p.get("eot", 1) or 1), 1)


def _white_box(attack: str, p: dict[str, Any] | None) -> bool:
    """Gradients through the defence, for which EOT means something (the `white_box` hook)."""
    spec = _spec("attack", attack)
    if spec is None:
        return False
    return "needs_gradients" in spec.capabilities if p is None else spec.is_white_box(p)


def _black_box(attack: str) -> bool:
    return "black_box" in _capabilities("attack", attack)


def _strength(attack: str, p: dict[str, Any]) -> tuple[int, ...]:
    spec = _spec("attack", attack)
    given = spec.strength(p) if spec is not None else {}
    return tuple(int(given.get(k, 0)) for k in _STRENGTH)


def _setting(attack: str, p: dict[str, Any]) -> str:
    spec = _spec("attack", attack)
    given = spec.strength(p) if spec is not None else {}
    return ",".join(f"{k}={given[k]}" for k in _STRENGTH if k in given)


def _clean(attack: Any) -> bool:
    """No attack at all (capability `clean`): clean accuracy rows."""
    return attack is None or (isinstance(attack, float) and math.isnan(attack)) or \
        "clean" in _capabilities("attack", attack)


def check(df: Any, summary: pd.DataFrame, tol: Tolerances | None = None,
          info: pd.DataFrame | None = None) -> pd.DataFrame:
    """Validity flags of a summary (:func:`analysis.aggregate.summarise` of ``df``, rows as a
    DataFrame or :class:`analysis.engine.Rows`); ``info`` is the aggregation's per-group facts
    (computed from ``df`` when not given).

    Returns a DataFrame with FLAG_COLUMNS: one row per (summary row, flag), in summary order
    then CHECKS order; ``attrs["checked"]`` lists the codes of the checks that had data and
    ``attrs["not_checked"]`` maps every other code to the reason it could not run.
    """
    tol = tol or Tolerances()
    keys = list(GROUP_KEYS)
    if info is None:
        from .aggregate import aggregate

        info = aggregate(df, worst_of=False).info
    rows = summary.merge(_group_info(info), on=keys, how="left", suffixes=("", "_info"))
    for c in ("purifier", "attack"):  # the names the checks read: from the cells' JSON
        if f"{c}_info" in rows.columns:
            rows[c] = rows.pop(f"{c}_info")
    attacked = rows[np.array([not _clean(a) for a in rows["attack"]], dtype=bool) & (rows["eps"] > 0)]
    flags: list[tuple[tuple, str, str]] = []
    checked: set[str] = set()

    def flag(row: pd.Series, code: str, message: str) -> None:
        flags.append((_key(row), code, message))

    # 1. attack works: the bare classifier under the same attack.
    for _, g in attacked.groupby(["dataset", "classifier", "threat", "eps", "attack_label"],
                                 sort=False, dropna=False):
        bare = g[["no_defence" in _capabilities("purifier", p) for p in g["purifier"]]]
        if bare.empty:
            continue
        checked.add("attack-weak")
        b = bare.iloc[0]
        if b["robust_mean"] > tol.works(int(b["n"])):
            for _, r in g.iterrows():
                flag(r, "attack-weak",
                     f"bare classifier keeps {_pct(b['robust_mean'])} under this attack")

    # 2. monotone in eps, and unbounded eps ~0.
    fam = attacked.assign(_family=[_without(p, ("eps", "step_size")) for p in attacked["attack_params"]])
    fam = fam[fam["_family"].notna()]
    for _, g in fam.groupby(["dataset", "classifier", "label", "attack", "threat", "_family"],
                            sort=False, dropna=False):
        if g["eps"].nunique() < 2:
            continue
        checked.add("eps-nonmonotone")
        for _, r in g.iterrows():
            smaller = g[g["eps"] < r["eps"]]
            excess = [(r["robust_mean"] - s["robust_mean"], s) for _, s in smaller.iterrows()
                      if tol.exceeds(r["robust_mean"] - s["robust_mean"], int(r["n"]), int(s["n"]))]
            if excess:
                _, s = max(excess, key=lambda e: e[0])
                flag(r, "eps-nonmonotone",
                     f"non-monotone in eps: {_pct(r['robust_mean'])} at eps={r['eps']:g} "
                     f"above {_pct(s['robust_mean'])} at eps={s['eps']:g}")
    for _, r in attacked.iterrows():
        unbounded = (r["threat"] == "linf" and r["eps"] >= tol.unbounded_linf) or \
                    (r["threat"] == "l2" and r["eps"] >= tol.unbounded_l2)
        if not unbounded:
            continue
        checked.add("eps-unbounded")
        if r["robust_mean"] > tol.works(int(r["n"])):
            flag(r, "eps-unbounded",
                 f"unbounded eps not ~0 (gradient masking?): {_pct(r['robust_mean'])} "
                 f"at {r['threat']} eps={r['eps']:g}")

    # 3. black-box beats white-box.
    for _, g in attacked.groupby(["dataset", "classifier", "label", "threat", "eps"],
                                 sort=False, dropna=False):
        black = g[[_black_box(a) for a in g["attack"]]]
        white = g[[_white_box(a, p) for a, p in zip(g["attack"], g["attack_params"])]]
        if black.empty or white.empty:
            continue
        checked.add("bb-stronger")
        best = black.loc[black["robust_mean"].idxmin()]
        for _, r in white.iterrows():
            if tol.exceeds(r["robust_mean"] - best["robust_mean"], int(r["n"]), int(best["n"])):
                flag(r, "bb-stronger",
                     f"black-box stronger: likely gradient masking ({best['attack_label']} gives "
                     f"{_pct(best['robust_mean'])}, this attack {_pct(r['robust_mean'])})")

    # 4. a deterministic attack on a random defence.
    for _, r in attacked.iterrows():
        p = r["attack_params"]
        if p is None or not _white_box(r["attack"], p):
            continue
        random_plugin = "stochastic" in _capabilities("purifier", str(r["purifier"]))
        random = random_plugin or bool(r["random_seen"])
        if not random:
            continue
        checked.add("no-eot")
        if _effective_eot(r["attack"], p) <= 1:
            why = "stochastic purifier" if random_plugin else "predictions differ between runs"
            flag(r, "no-eot", f"random defence, attack without EOT ({why}; eot=1)")

    # 5. more steps / EOT / queries do not lower the number.
    conv = attacked.assign(_family=[_without(p, _STRENGTH) for p in attacked["attack_params"]])
    conv = conv[conv["_family"].notna()]
    for _, g in conv.groupby(["dataset", "classifier", "label", "attack", "threat", "eps", "_family"],
                             sort=False, dropna=False):
        if len(g) < 2:
            continue
        checked.add("not-converged")
        strength = {i: _strength(r["attack"], r["attack_params"]) for i, r in g.iterrows()}
        for i, r in g.iterrows():
            stronger = [j for j in g.index if j != i and strength[j] != strength[i]
                        and all(a >= b for a, b in zip(strength[j], strength[i]))]
            if not stronger:
                continue
            s = g.loc[min(stronger, key=lambda j: g.loc[j, "robust_mean"])]
            if tol.exceeds(r["robust_mean"] - s["robust_mean"], int(r["n"]), int(s["n"])):
                flag(r, "not-converged",
                     f"not converged: more steps/EOT lower it to {_pct(s['robust_mean'])} "
                     f"({_setting(s['attack'], s['attack_params'])})")

    # 6. the attack did nothing, or barely used its budget where the defence held.
    for _, r in attacked.iterrows():
        p = r["attack_params"] or {}
        name = r["attack"]
        iterative = "iterative" in _capabilities("attack", name)
        null_params = iterative and (
            ("steps" in p and int(p["steps"]) == 0) or ("step_size" in p and float(p["step_size"]) == 0))
        clean_on_failure = "unperturbed_on_failure" in _capabilities("attack", name) or bool(r["found_by"])
        pert = r["pert_robust"]
        measured = not clean_on_failure and r["robust_rows"] > 0 and not pd.isna(pert)
        if null_params or measured:
            checked.add("attack-null")
        zero = measured and pert <= tol.zero_perturbation * r["eps"]
        if zero or null_params:
            what = ("steps=0" if "steps" in p and int(p["steps"]) == 0 else
                    "step_size=0" if "step_size" in p and float(p["step_size"]) == 0 else "")
            if zero:
                detail = f"{what}; " if what else ""
                message = (f"attack did nothing (zero perturbation): {detail}mean perturbation "
                           f"{pert:.3g} on the examples that stayed correct, eps {r['eps']:g}")
            else:
                start = ", random start only" if p.get("random_start") else ""
                message = f"attack did nothing ({what}: no gradient step{start})"
            flag(r, "attack-null", message)
        elif measured and iterative:
            checked.add("small-perturbation")
            if pert < tol.small_perturbation * r["eps"]:
                flag(r, "small-perturbation",
                     f"attack barely perturbs robust examples: mean {r['threat']} perturbation "
                     f"{pert:.3g} vs eps {r['eps']:g}")

    # 7. non-finite predictions and gradients (summary columns: worst-of rows included).
    recorded = bool(rows["grad_recorded"].eq(True).any())
    for _, r in rows.iterrows():
        bad = int(r["nonfinite"])
        if bad:
            flag(r, "non-finite", f"{bad} of {int(r['rows'])} predictions came from non-finite "
                                  "logits (counted as wrong)")
        grads = int(r["grad_nonfinite"])
        if grads:
            flag(r, "gradient-masked",
                 f"the attack's gradient was non-finite in {grads} evaluations on "
                 f"{int(r['grad_nonfinite_examples'])} examples; those steps were zeroed")
    if recorded or (rows["nonfinite"] > 0).any():
        checked.add("non-finite")
    gradient = attacked[np.array([_takes_gradients(a) for a in attacked["attack"]], dtype=bool)]
    if gradient["grad_recorded"].eq(True).any() or (rows["grad_nonfinite"] > 0).any():
        checked.add("gradient-masked")

    out = pd.DataFrame([(*k, code, msg) for k, code, msg in flags], columns=list(FLAG_COLUMNS))
    if not out.empty:
        order = {k: i for i, k in enumerate(summary[keys].itertuples(index=False, name=None))}
        out["_o"] = [order.get(tuple(r), math.inf) for r in out[keys].itertuples(index=False, name=None)]
        out["_f"] = out["flag"].map(FLAG_ORDER)
        out = (out.sort_values(["_o", "_f"], kind="stable").drop(columns=["_o", "_f"])
               .drop_duplicates().reset_index(drop=True))
    out.attrs["checked"] = [c for c, _ in CHECKS if c in checked]
    out.attrs["not_checked"] = {c: _why_not(c, attacked) for c, _ in CHECKS if c not in checked}
    return out


def _takes_gradients(attack: Any) -> bool:
    return isinstance(attack, str) and "needs_gradients" in _capabilities("attack", attack)


def _why_not(code: str, attacked: pd.DataFrame) -> str:
    if code == "gradient-masked" and not any(_takes_gradients(a) for a in attacked["attack"]):
        return "no gradient attack in these results"
    return NOT_CHECKED[code]


def annotate(summary: pd.DataFrame, flags: pd.DataFrame) -> pd.DataFrame:
    """The summary with ``flags`` (semicolon-joined codes, "" when none) and
    ``flag_messages`` (a list of (code, message) per row)."""
    keys = list(GROUP_KEYS)
    messages: dict[tuple, list[tuple[str, str]]] = {}
    for r in flags.itertuples(index=False):
        k = tuple(getattr(r, c) for c in keys)
        messages.setdefault(k, []).append((r.flag, r.message))
    out = summary.copy()
    per_row = [messages.get(k, []) for k in summary[keys].itertuples(index=False, name=None)]
    out["flags"] = [";".join(dict.fromkeys(c for c, _ in m)) for m in per_row]
    out["flag_messages"] = per_row
    return out
