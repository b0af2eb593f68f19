"""The claims register (data/claims.toml) and course_lib.claims's verdict rules."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest

from course_lib import claims, data

ROOT = Path(__file__).resolve().parent.parent
SEEDS = ROOT.parent / "shared" / "seeds"
FIXTURE = Path(__file__).parent / "fixtures" / "claims.toml"


@pytest.fixture(scope="module")
def register():
    return claims.load(ROOT / "data" / "claims.toml")


def test_register_loads_and_every_claim_is_complete(register):
    assert len(register) >= 10
    for c in register.values():
        assert c.sources and all(s["title"] and s["site"] and s["seed"] for s in c.sources)
        assert c.rule and c.scope_here and c.source_scope
        assert all(re.fullmatch(r"\d\d", lesson) for lesson in c.lessons)
        assert all(re.fullmatch(r"\d\d/\w+", r) for r in c.records)
        assert c.measurable_here or c.needs


def test_register_is_in_the_data_manifest_with_its_checksum():
    """The Colab setup downloads what the manifest lists, and checks the SHA-256."""
    entry = data.manifest(ROOT / "data")["claims.toml"]
    assert data.sha256_of(ROOT / "data" / "claims.toml") == entry["sha256"], (
        "update data/MANIFEST.json after editing data/claims.toml")


@pytest.mark.skipif(not SEEDS.is_dir(), reason="the seed articles are not on this machine")
def test_every_source_is_a_seed_article_and_no_sentence_is_copied(register):
    texts = {p.name: p.read_text(encoding="utf-8") for p in SEEDS.glob("*.txt")}
    for c in register.values():
        for s in c.sources:
            assert s["seed"] in texts, (c.id, s["seed"])
            if not s["title"].startswith("Untitled"):
                assert s["title"] in texts[s["seed"]], (c.id, s["title"])
            if not s["site"].startswith("not named"):
                assert s["site"] in texts[s["seed"]], (c.id, s["site"])
        words = c.claim.split()  # our own words: no run of 8 words from the article
        for i in range(len(words) - 7):
            run = " ".join(words[i:i + 8])
            assert not any(run in t for t in texts.values()), (c.id, run)


def test_gpu_and_very_large_model_claims_are_not_judged_here(register):
    gpu = register["tf_faster_than_torch_gpu"]
    assert not gpu.measurable_here and "GPU" in gpu.needs
    verdict = claims.judge(gpu, (5.0, 6.0))  # a CPU figure that would say "holds"
    assert verdict.verdict == claims.NOT_HERE and verdict.interval is None
    assert str(verdict) == f"not measured here: needs {gpu.needs}"
    assert claims.judge(register["jax_speedup"], (2.5, 3.0)).verdict == claims.NOT_HERE


def _claim(**changes):
    base = dict(id="x", claim="X is fast.", sources=({"title": "T", "site": "S"},),
                source_scope="any", lessons=("09",), records=("09/step_time",), rule="r",
                scope_here="CPU", measurable_here=True, threshold=2.0, holds_if="above")
    return claims.Claim(**{**base, **changes})


@pytest.mark.parametrize("interval, expected", [
    ((2.1, 3.0), claims.HOLDS), ((1.2, 1.9), claims.FAILS), ((1.5, 2.5), claims.CANT_TELL),
    ((2.0, 2.4), claims.CANT_TELL)])
def test_judge_three_way_from_the_interval(interval, expected):
    assert claims.judge(_claim(), interval).verdict == expected


def test_judge_below_and_explicit_threshold():
    c = _claim(holds_if="below", threshold=1.25)
    assert claims.judge(c, (1.0, 1.2)).verdict == claims.HOLDS
    assert claims.judge(c, (1.3, 1.4)).verdict == claims.FAILS
    assert claims.judge(c, (1.3, 1.4), threshold=1.5).verdict == claims.HOLDS


def test_judge_without_records_and_bad_input():
    v = claims.judge(_claim(), None, missing="lesson 09 did not run")
    assert v.verdict == claims.NOT_MEASURED and "lesson 09" in v.reason
    with pytest.raises(ValueError, match="low <= high"):
        claims.judge(_claim(), (3.0, 2.0))
    with pytest.raises(ValueError, match="low <= high"):
        claims.judge(_claim(), (math.nan, 2.0))
    with pytest.raises(ValueError, match="threshold"):
        claims.judge(_claim(threshold=None, holds_if=None), (1.0, 2.0))


def test_one_median_is_never_enough_a_noisy_measurement_cannot_tell():
    quiet = [2.5, 2.55, 2.6, 2.65, 2.7]
    noisy = [0.8, 1.5, 2.2, 2.6, 3.0, 3.6, 4.5]  # the same median, a wide spread
    assert np.median(quiet) == np.median(noisy) == 2.6
    assert claims.judge(_claim(), claims.interval(quiet)).verdict == claims.HOLDS
    assert claims.judge(_claim(), claims.interval(noisy)).verdict == claims.CANT_TELL
    assert claims.judge(_claim(), claims.interval(noisy, method="bootstrap")).verdict \
        == claims.CANT_TELL


def test_interval_iqr_and_bootstrap():
    samples = [1.0, 2.0, 3.0, 4.0, 5.0]
    assert claims.interval(samples) == (2.0, 4.0)
    low, high = claims.interval(samples, method="bootstrap", seed=1)
    assert 1.0 <= low <= 3.0 <= high <= 5.0
    assert claims.interval(samples, method="bootstrap", seed=1) == (low, high)  # reproducible
    for bad in ([], [1.0, math.inf]):
        with pytest.raises(ValueError, match="finite"):
            claims.interval(bad)
    with pytest.raises(ValueError, match="method"):
        claims.interval(samples, method="mean")


def test_ratio_interval_is_the_widest_the_spreads_allow():
    assert claims.ratio_interval((4.0, 6.0), (1.0, 2.0)) == (2.0, 6.0)
    with pytest.raises(ValueError, match="denominator"):
        claims.ratio_interval((1.0, 2.0), (0.0, 1.0))


def test_overlapping_intervals_are_a_tie():
    assert claims.compare((1.0, 2.0), (1.5, 3.0)) == "tie"
    assert claims.compare((1.0, 2.0), (2.0, 3.0)) == "tie"  # touching
    assert claims.compare((1.0, 2.0), (2.1, 3.0)) == "a"
    assert claims.compare((1.0, 2.0), (2.1, 3.0), better="higher") == "b"
    with pytest.raises(ValueError, match="better"):
        claims.compare((1, 2), (3, 4), better="faster")


def test_wilson_interval_of_a_proportion():
    low, high = claims.wilson(3, 4)
    assert 0.29 < low < 0.31 and 0.95 < high < 0.96  # Wilson (1927); e.g. statsmodels agrees
    assert claims.wilson(0, 5)[0] == 0.0 and claims.wilson(5, 5)[1] == 1.0
    with pytest.raises(ValueError):
        claims.wilson(3, 2)


def test_combine_one_counterexample_refutes_a_general_claim():
    c = _claim()
    v = [claims.Verdict("x", claims.HOLDS, (2.1, 3), ""),
         claims.Verdict("x", claims.CANT_TELL, (1.9, 3), "")]
    assert claims.combine(c, v).verdict == claims.CANT_TELL
    assert claims.combine(c, v[:1]).verdict == claims.HOLDS
    both = claims.combine(c, [*v, claims.Verdict("x", claims.FAILS, (1, 1.5), "")])
    assert both.verdict == claims.FAILS and "of 3 cases" in both.reason
    assert claims.combine(c, []).verdict == claims.NOT_MEASURED
    assert claims.combine(_claim(measurable_here=False, needs="a TPU"), v).verdict \
        == claims.NOT_HERE


@pytest.mark.parametrize("text, message", [
    ('[[claim]]\nid = "a"\n', "missing fields"),
    ('[[claim]]\nid = "a"\nclaim = "c"\nsources = [{title = "t", site = "s"}]\n'
     'source_scope = "s"\nlessons = ["01"]\nrecords = ["01/m"]\nrule = "r"\nscope_here = "h"\n'
     'measurable_here = false\n', "needs"),
    ('[[claim]]\nid = "a"\nclaim = "c"\nsources = []\nsource_scope = "s"\nlessons = ["01"]\n'
     'records = ["01/m"]\nrule = "r"\nscope_here = "h"\nmeasurable_here = true\n', "sources"),
    ('[[claim]]\nid = "a"\nclaim = "c"\nsources = [{title = "t", site = "s"}]\n'
     'source_scope = "s"\nlessons = ["01"]\nrecords = ["m"]\nrule = "r"\nscope_here = "h"\n'
     'measurable_here = true\n', "<lesson>/<metric>"),
    ('[[claim]]\nid = "a"\nclaim = "c"\nsources = [{title = "t", site = "s"}]\n'
     'source_scope = "s"\nlessons = ["01"]\nrecords = ["01/m"]\nrule = "r"\nscope_here = "h"\n'
     'measurable_here = true\nthreshold = 2\n', "go together"),
    ("not toml = = 1", "not valid TOML"),
    ("", "no \\[\\[claim\\]\\]"),
])
def test_invalid_register_says_what_is_wrong(tmp_path, text, message):
    path = tmp_path / "claims.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(claims.RegisterError, match=message):
        claims.load(path)


def test_fixture_register_duplicate_ids_and_missing_file(tmp_path):
    register = claims.load(FIXTURE)
    assert list(register) == ["small", "far"]
    assert register["far"].cite() == "Far article (site not named; seed file 000_x.txt)"
    path = tmp_path / "claims.toml"
    text = FIXTURE.read_text(encoding="utf-8")
    path.write_text(text + text, encoding="utf-8")
    with pytest.raises(claims.RegisterError, match="appears twice"):
        claims.load(path)
    with pytest.raises(claims.RegisterError, match="git checkout -- data/claims.toml"):
        claims.load(tmp_path / "absent.toml")
    with pytest.raises(KeyError, match="small"):
        claims.get("nope", register)


def test_site_page_lists_every_claim_with_source_scope_and_status(tmp_path, register):
    from course_tools.site import claims as page

    name = page.write_page(tmp_path, results_dir=tmp_path / "none")
    text = (tmp_path / f"{name}.md").read_text(encoding="utf-8")
    assert text.startswith("# ")
    for c in register.values():
        assert f"## {c.id}" in text and c.claim in text and c.source_scope in text
        if not c.measurable_here:
            assert f"not measured here: needs {c.needs}" in text


def test_site_page_shows_the_verdicts_lesson_12_recorded(tmp_path):
    from course_lib import results
    from course_tools.site import claims as page

    results.record("12", "claim_verdict", 1.0, "verdict", framework="none", results_dir=tmp_path,
                   claim_id="small", verdict="can't tell", reason="interval [1.9, 2.2]")
    text = page.page_text(claims.load(FIXTURE), page._verdicts(tmp_path))
    assert "**Verdict in this run (lesson 12):** can't tell: interval [1.9, 2.2]" in text
