"""The site's "Claims" page: the claims register (``data/claims.toml``) as MyST Markdown.

:func:`write_page` is called by ``course_tools.runner.write_site_sources``. Each claim shows
its words, its sources (title and site), the scope the source states, what the course can
measure here (or "not measured here: needs X"), the verdict rule fixed in advance, the lessons
and records that test it, and, when lesson 12 of this run recorded one, its verdict.
"""

from __future__ import annotations

import os
from pathlib import Path

DOC_NAME = "claims"


def _verdicts(results_dir) -> dict[str, str]:
    """claim id -> "verdict: reason" from lesson 12's ``claim_verdict`` records, if any."""
    if results_dir is None:
        return {}
    from course_lib import results

    try:
        frame = results.read_results(results_dir)
    except (OSError, ValueError):
        return {}
    if frame.empty or "claim_id" not in frame:
        return {}
    rows = frame[(frame["lesson"] == "12") & (frame["metric"] == "claim_verdict")]
    out = {}
    for _, r in rows.iterrows():
        reason = r.get("reason")
        out[r["claim_id"]] = str(r["verdict"]) + (f": {reason}" if isinstance(reason, str)
                                                  and reason else "")
    return out


def page_text(register: dict, verdicts: dict[str, str] | None = None) -> str:
    """The page's MyST Markdown from a loaded register (``course_lib.claims.load()``) and
    optional verdicts (claim id -> text)."""
    verdicts = verdicts or {}
    lines = [
        "# The claims, their sources and their scope", "",
        "Every claim of the articles that the course judges, in the course's own words, with "
        "the article it comes from, the scope the article states, what this course can "
        "measure, and the rule that decides it (fixed before looking at the numbers). A "
        "verdict is *holds*, *fails* or *can't tell*, decided from the spread of the "
        "measurement; a claim outside what the machine can reach is *not measured here*, "
        "never judged from a smaller stand-in. Lesson 12 gathers the verdicts.", "",
        "| claim | source | measured here |", "|---|---|---|",
    ]
    for c in register.values():
        here = "yes" if c.measurable_here else f"not measured here: needs {c.needs}"
        lines.append(f"| {c.id} | {c.cite()} | {here} |")
    for c in register.values():
        lines += ["", f"## {c.id}", "", f"**{c.claim}**", "",
                  f"- **Source:** {c.cite()}",
                  f"- **Scope the source states:** {c.source_scope}",
                  f"- **What the course measures here:** {c.scope_here}",
                  "- **Status:** " + ("measured" if c.measurable_here
                                      else f"not measured here: needs {c.needs}")
                  + (f" (beyond it: needs {c.needs})" if c.measurable_here and c.needs else ""),
                  f"- **Verdict rule:** {c.rule}",
                  f"- **Lessons:** {', '.join(c.lessons)}; **records:** "
                  + ", ".join(f"`{r}`" for r in c.records)]
        if c.id in verdicts:
            lines.append(f"- **Verdict in this run (lesson 12):** {verdicts[c.id]}")
    return "\n".join(lines) + "\n"


def write_page(src: str | os.PathLike, results_dir: str | os.PathLike | None = None,
               register_path: str | os.PathLike | None = None) -> str:
    """Write ``<src>/claims.md`` (atomically) and return its document name, ``"claims"``.

    Raises:
        course_lib.claims.RegisterError: the register is missing or invalid (the site would
            otherwise publish claims without their sources).
    """
    from course_lib import claims, paths

    text = page_text(claims.load(register_path), _verdicts(results_dir))
    paths.write_text_atomic(Path(src) / f"{DOC_NAME}.md", text)
    return DOC_NAME
