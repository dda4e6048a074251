"""Unit tests for hardenkit.validate: metrics, Wilson intervals, DER, GatePolicy, Validator.

The models here are hand-built and deterministic, so every BA/ASR/RA value is known exactly:

* an image *encodes* a class ``e`` in pixel (channel 0, row 0, col 0) as ``e / 10``;
* the bottom-right pixel white in every channel is the trigger (``PatchTrigger.square(1)``);
* channel 1 of pixel (0, 0) set to 1.0 marks an image as *immune* to the trigger.
"""

from __future__ import annotations

import json

import pydantic
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import hardenkit as hk
from hardenkit.errors import ConfigError, DataError, ModelCompatibilityError
from hardenkit.triggers import PatchTrigger
from hardenkit.validate import (
    GateDecision,
    GatePolicy,
    RateEstimate,
    RuleResult,
    ValidationReport,
    Validator,
    attack_success_rate,
    benign_accuracy,
    der,
    paired_drop_interval,
    robust_accuracy,
    wilson_interval,
)

K = 4
TARGET = 0
TRIGGER = PatchTrigger.square(1, location="bottom-right")


class CodeModel(nn.Module):
    """Predicts the class encoded in the image; a white bottom-right pixel triggers ``mode``.

    Modes: ``to-target`` (triggered → ``target``), ``shift`` (triggered → ``(e + 1) mod K``),
    ``always`` (every image → ``target``, triggered or not), ``redirect`` (triggered → class 2:
    a backdoor a defence moved instead of removing).
    """

    def __init__(self, num_classes: int = K, *, mode: str = "to-target", target: int = TARGET):
        super().__init__()
        self.num_classes = num_classes
        self.mode = mode
        self.target = target
        self.scale = nn.Parameter(torch.ones(()))  # something for state_dict/device checks
        self.register_buffer("calls", torch.zeros((), dtype=torch.int64), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        e = torch.round(x[:, 0, 0, 0] * 10).long().clamp(0, self.num_classes - 1)
        triggered = (x[:, :, -1, -1] >= 0.999).all(dim=1)
        immune = x[:, 1, 0, 0] >= 0.999
        if self.mode == "always":
            pred = torch.full_like(e, self.target)
        else:
            if self.mode == "to-target":
                hit = torch.full_like(e, self.target)
            elif self.mode == "redirect":
                hit = torch.full_like(e, 2)
            else:
                hit = (e + 1) % K
            pred = torch.where(triggered & ~immune, hit, e)
        return F.one_hot(pred, self.num_classes).float() * 10 * self.scale


# 20 test images, 5 per class. Index 5 (y=1) encodes 2 and index 10 (y=2) encodes 3, so the
# clean model gets 18/20 right. Indices 6 (y=1), 15 and 16 (y=3) ignore the trigger.
LABELS = torch.arange(K).repeat_interleave(5)
ENCODED = LABELS.clone()
ENCODED[5], ENCODED[10] = 2, 3
IMMUNE = torch.zeros(20, dtype=torch.bool)
IMMUNE[[6, 15, 16]] = True


def make_images(encoded: Tensor = ENCODED, immune: Tensor = IMMUNE, size: int = 8) -> Tensor:
    x = torch.full((len(encoded), 3, size, size), 0.25)
    x[:, 0, 0, 0] = encoded.float() / 10
    x[immune, 1, 0, 0] = 1.0
    return x


def make_loader(batch_size: int = 7) -> list[tuple[Tensor, Tensor]]:
    """The 20 images as a list of batches (several batches: counts must accumulate)."""
    x = make_images()
    return [(x[i : i + batch_size], LABELS[i : i + batch_size]) for i in range(0, 20, batch_size)]


# ----------------------------------------------------------------------------- exact metrics


def test_hand_model_sanity() -> None:
    m = CodeModel()
    x = make_images()
    assert torch.equal(m(x).argmax(1), ENCODED)
    pred_t = m(TRIGGER(x)).argmax(1)
    assert torch.equal(pred_t[~IMMUNE], torch.zeros(17, dtype=torch.int64))
    assert torch.equal(pred_t[IMMUNE], ENCODED[IMMUNE])


def test_ba_asr_ra_exact_values() -> None:
    rep = Validator(CodeModel()).run(make_loader(), trigger=TRIGGER, target=TARGET)
    assert rep.num_classes == K
    assert rep.samples == 20
    assert rep.benign_accuracy.successes == 18
    assert rep.benign_accuracy.total == 20
    assert rep.ba == pytest.approx(0.9)
    # 15 non-target images; 3 of them are immune → 12 flip to the target.
    assert rep.attack_success_rate is not None
    assert rep.robust_accuracy is not None
    assert rep.attack_success_rate.successes == 12
    assert rep.attack_success_rate.total == 15
    assert rep.asr == pytest.approx(0.8)
    # RA: the immune images (6, 15, 16) keep their correct class.
    assert rep.robust_accuracy.successes == 3
    assert rep.robust_accuracy.total == 15
    assert rep.ra == pytest.approx(0.2)
    assert rep.triggered_samples == 15
    assert rep.asr_without_trigger is not None
    assert rep.asr_without_trigger.successes == 0  # no clean non-target image says 0
    per_class = {c.label: (c.correct, c.total, c.accuracy) for c in rep.per_class_accuracy}
    assert per_class == {0: (5, 5, 1.0), 1: (4, 5, 0.8), 2: (4, 5, 0.8), 3: (5, 5, 1.0)}
    assert rep.target == TARGET
    assert rep.trigger is not None
    assert rep.trigger["kind"] == "patch"
    assert rep.decision is None
    assert rep.passed is None


def test_asr_excludes_target_class_images() -> None:
    """ASR's denominator holds exactly the non-target test images (BENCHMARKS.md)."""
    for target in range(K):
        rep = Validator(CodeModel(target=target)).run(make_loader(), trigger=TRIGGER, target=target)
        assert rep.attack_success_rate is not None
        assert rep.attack_success_rate.total == int((target != LABELS).sum()) == 15


def test_always_target_model_gets_asr_one_without_target_images() -> None:
    """A model that always predicts the target: ASR = 1.0 over the 15 non-target images only."""
    rep = Validator(CodeModel(mode="always")).run(make_loader(), trigger=TRIGGER, target=TARGET)
    assert rep.ba == pytest.approx(5 / 20)
    assert rep.asr == 1.0
    assert rep.attack_success_rate is not None
    assert rep.attack_success_rate.successes == rep.attack_success_rate.total == 15
    assert rep.ra == 0.0


def test_all_to_all_mapping() -> None:
    mapping = {c: (c + 1) % K for c in range(K)}
    rep = Validator(CodeModel(mode="shift")).run(make_loader(), trigger=TRIGGER, target=mapping)
    assert rep.attack_success_rate is not None
    assert rep.robust_accuracy is not None
    # All 20 images count; success = (e + 1) == (y + 1) on non-immune images with e == y.
    assert rep.attack_success_rate.total == 20
    assert rep.attack_success_rate.successes == 15  # 17 non-immune minus indices 5 and 10
    assert rep.asr == pytest.approx(0.75)
    # RA: the 3 immune images keep their true class; every other image moves.
    assert rep.robust_accuracy.successes == 3
    assert rep.target == {str(k): v for k, v in mapping.items()}
    # without the trigger, indices 5 (y=1, encodes 2) and 10 (y=2, encodes 3) already land
    # on their targets: the floor under the ASR
    assert rep.asr_without_trigger is not None
    assert rep.asr_without_trigger.successes == 2
    assert rep.asr_without_trigger.total == 20


def test_mapping_to_itself_excludes_the_class() -> None:
    """A mapping entry c -> c (or a missing entry) leaves class c out of ASR."""
    rep = Validator(CodeModel(mode="shift")).run(
        make_loader(), trigger=TRIGGER, target={0: 1, 1: 1, 2: 3}
    )
    assert rep.attack_success_rate is not None
    assert rep.attack_success_rate.total == 10  # classes 0 and 2 only


def test_to_target_model_under_all_to_all_mapping() -> None:
    """Only label 3 maps to 0; the 'to-target' model hits it on the 3 non-immune class-3 images."""
    mapping = {c: (c + 1) % K for c in range(K)}
    rep = Validator(CodeModel()).run(make_loader(), trigger=TRIGGER, target=mapping)
    assert rep.attack_success_rate is not None
    assert rep.robust_accuracy is not None
    assert (rep.attack_success_rate.successes, rep.attack_success_rate.total) == (3, 20)
    # RA: class-0 non-immune images predicted 0 (5) + immune images with e == y (3).
    assert rep.robust_accuracy.successes == 8


def test_no_trigger_report_has_no_asr() -> None:
    rep = Validator(CodeModel()).run(make_loader())
    assert rep.attack_success_rate is None
    assert rep.robust_accuracy is None
    assert rep.asr is None
    assert rep.ra is None
    assert rep.triggered_samples == 0
    assert rep.trigger is None
    assert rep.target is None
    assert "ASR n/a" in rep.summary()


def test_summary_text() -> None:
    rep = Validator(CodeModel()).run(make_loader(), trigger=TRIGGER, target=TARGET)
    text = rep.summary()
    assert text.splitlines()[0].startswith("BA  90.00% [")
    assert "(n=20)" in text
    assert "ASR 80.00%" in text
    assert "; without the trigger 0.00%" in text
    assert "(n=15)" in text
    assert "RA  20.00%" in text


# ----------------------------------------------------------------------------- Wilson / DER


@pytest.mark.parametrize(
    ("successes", "total", "low", "high"),
    [
        (9, 10, 0.5958, 0.9821),
        (50, 100, 0.4038, 0.5962),
        (0, 10, 0.0, 0.2775),
        (10, 10, 0.7225, 1.0),
        (0, 1, 0.0, 0.7935),
        (1, 1, 0.2065, 1.0),
    ],
)
def test_wilson_interval_known_values(successes: int, total: int, low: float, high: float) -> None:
    lo, hi = wilson_interval(successes, total)
    assert lo == pytest.approx(low, abs=1e-4)
    assert hi == pytest.approx(high, abs=1e-4)
    assert 0.0 <= lo <= successes / total + 1e-12
    assert successes / total - 1e-12 <= hi <= 1.0


@pytest.mark.parametrize(
    ("b", "c", "n", "low", "high"),
    [  # Agresti & Min's Wald+2, worked by hand: diff = (b-c)/(n+2),
        # sd = sqrt((b+c+1) - (b-c)^2/(n+2)) / (n+2)
        (6, 2, 250, -0.007377, 0.039123),
        (0, 0, 100, -0.019215, 0.019215),
        (20, 5, 250, 0.020552, 0.098495),
        (2, 6, 250, -0.039123, 0.007377),  # the other direction: a gain
    ],
)
def test_paired_drop_interval_known_values(b: int, c: int, n: int, low: float, high: float) -> None:
    lo, hi = paired_drop_interval(right_before_only=b, right_after_only=c, n=n)
    assert lo == pytest.approx(low, abs=1e-6)
    assert hi == pytest.approx(high, abs=1e-6)
    assert lo <= (b - c) / n <= hi


def test_paired_drop_interval_narrows_with_images_and_stays_in_range() -> None:
    small = paired_drop_interval(8, 3, 250)
    large = paired_drop_interval(80, 30, 2500)  # the same rates on ten times the images
    assert large[1] - large[0] < (small[1] - small[0]) / 3
    assert paired_drop_interval(250, 0, 250)[1] == 1.0
    assert paired_drop_interval(0, 250, 250)[0] == -1.0
    # much narrower than the difference of the two accuracies' own intervals: the same images
    lo_b, hi_b = wilson_interval(225, 250)
    lo_a, hi_a = wilson_interval(220, 250)
    lo, hi = paired_drop_interval(6, 1, 250)
    assert hi - lo < (hi_b - lo_a) - (lo_b - hi_a)
    with pytest.raises(ValueError, match="discordant"):
        paired_drop_interval(-1, 0, 10)
    with pytest.raises(ValueError, match="discordant"):
        paired_drop_interval(6, 6, 10)


def test_wilson_interval_contains_point_estimate_exactly() -> None:
    """Regression: float rounding used to give wilson_interval(10, 10)[1] == 0.9999999999999999
    and wilson_interval(0, 69)[0] == 3.5e-18, excluding p = 1 / p = 0 from the interval."""
    for n in range(1, 201):
        for s in (0, 1, n // 2, n - 1, n):
            lo, hi = wilson_interval(s, n)
            assert lo <= s / n <= hi, (s, n, lo, hi)
        assert wilson_interval(0, n)[0] == 0.0
        assert wilson_interval(n, n)[1] == 1.0


def test_wilson_interval_edges() -> None:
    assert wilson_interval(0, 0) == (0.0, 1.0)
    assert wilson_interval(0, -3) == (0.0, 1.0)
    assert wilson_interval(0, 25)[0] == 0.0  # clipped, never negative
    assert wilson_interval(25, 25)[1] == pytest.approx(1.0)
    # A wider z widens the interval; more samples narrow it.
    lo90, hi90 = wilson_interval(30, 60, z=1.644854)
    lo95, hi95 = wilson_interval(30, 60)
    assert lo95 < lo90 < 0.5 < hi90 < hi95
    lo_big, hi_big = wilson_interval(300, 600)
    assert hi_big - lo_big < hi95 - lo95


def test_rate_estimate_from_counts() -> None:
    r = RateEstimate.from_counts(9, 10)
    assert r.value == pytest.approx(0.9)
    assert (r.successes, r.total) == (9, 10)
    assert (r.ci_low, r.ci_high) == pytest.approx(wilson_interval(9, 10))
    empty = RateEstimate.from_counts(0, 0)
    assert empty.value is None  # no eligible sample: no value (and valid JSON)
    assert (empty.ci_low, empty.ci_high) == (0.0, 1.0)


def test_der_formula() -> None:
    assert der(ba_before=0.90, ba_after=0.89, asr_before=0.99, asr_after=0.01) == pytest.approx(
        0.985
    )
    # Perfect defence and the worst one.
    assert der(ba_before=0.9, ba_after=0.9, asr_before=1.0, asr_after=0.0) == 1.0
    assert der(ba_before=1.0, ba_after=0.0, asr_before=0.5, asr_after=0.5) == 0.0
    # Nothing changes → 0.5.
    assert der(ba_before=0.9, ba_after=0.9, asr_before=0.9, asr_after=0.9) == 0.5


def test_der_clips_improvements_and_regressions() -> None:
    # ASR going *up* counts as 0 (not negative); BA going *up* is not a bonus.
    assert der(ba_before=0.9, ba_after=0.9, asr_before=0.1, asr_after=0.6) == 0.5
    assert der(ba_before=0.8, ba_after=0.95, asr_before=0.99, asr_after=0.01) == pytest.approx(0.99)
    assert der(ba_before=0.8, ba_after=0.95, asr_before=0.2, asr_after=0.9) == 0.5
    # Only the BA drop counts against the defence.
    assert der(ba_before=0.9, ba_after=0.7, asr_before=0.5, asr_after=0.5) == pytest.approx(0.4)


# ----------------------------------------------------------------------------- GatePolicy


def test_policy_pass_fail_skipped() -> None:
    d = GatePolicy(min_ba=0.8, max_asr=0.05, max_ba_drop=0.03).evaluate(ba=0.9, asr=0.02)
    assert d.passed
    assert [(r.rule, r.status) for r in d.rules] == [
        ("benign_accuracy", "pass"),
        ("attack_success_rate", "pass"),
        ("benign_accuracy_drop", "skipped"),
    ]
    assert [r.rule_id for r in d.rules] == ["HK-BA-001", "HK-ASR-001", "HK-BA-002"]
    assert d.failed_rules == []

    d = GatePolicy(min_ba=0.8, max_asr=0.05).evaluate(ba=0.7, asr=0.5, baseline_ba=0.9)
    assert not d.passed
    assert [r.status for r in d.rules] == ["fail", "fail", "fail"]
    drop = d.rules[2]
    assert drop.value == pytest.approx(0.2)
    assert drop.threshold == 0.03
    assert {r.rule for r in d.failed_rules} == {
        "benign_accuracy",
        "attack_success_rate",
        "benign_accuracy_drop",
    }


def test_policy_boundaries_are_inclusive() -> None:
    d = GatePolicy(min_ba=0.9, max_asr=0.1, max_ba_drop=0.0).evaluate(
        ba=0.9, asr=0.1, baseline_ba=0.9
    )
    assert d.passed
    assert all(r.status == "pass" for r in d.rules)
    # A BA that *rises* against the baseline is a drop of 0.
    d = GatePolicy(max_ba_drop=0.0, max_asr=None).evaluate(ba=0.95, baseline_ba=0.9)
    assert d.passed
    assert d.rules[0].value == 0.0


def test_policy_rules_without_threshold_are_omitted() -> None:
    d = GatePolicy(min_ba=None, max_asr=None, max_ba_drop=None).evaluate(ba=0.1, asr=1.0)
    assert d.passed
    assert d.rules == []


def test_policy_require_all_rules() -> None:
    pol = GatePolicy(min_ba=0.5, max_asr=0.1, max_ba_drop=0.03, require_all_rules=True)
    d = pol.evaluate(ba=0.9)
    assert not d.passed
    assert [r.status for r in d.rules] == ["pass", "fail", "fail"]
    assert d.rules[1].value is None
    assert "ASR was not measured" in d.rules[1].message
    assert "no baseline BA" in d.rules[2].message


def test_policy_thresholds_validated() -> None:
    for field in ("min_ba", "max_asr", "max_ba_drop"):
        with pytest.raises(ConfigError, match=field):
            GatePolicy(**{field: 1.5})
        with pytest.raises(ConfigError):
            GatePolicy(**{field: -0.1})
    with pytest.raises(ConfigError):
        GatePolicy(max_asr=5)
    with pytest.raises(ConfigError):
        GatePolicy(unknown_rule=0.1)
    with pytest.raises(ValueError):  # ConfigError is also a ValueError
        GatePolicy(min_ba=2)
    GatePolicy(min_ba=0.0, max_asr=1.0, max_ba_drop=0.0)  # the inclusive ends are fine


def test_policy_defaults() -> None:
    pol = GatePolicy()
    assert pol.min_ba is None
    assert pol.max_asr == 0.10
    assert pol.max_ba_drop == 0.03
    assert not pol.require_all_rules
    assert not pol.use_upper_confidence_bound
    assert pol.max_trigger_share == 0.5


def test_decision_summary_text() -> None:
    d = GatePolicy(min_ba=0.8, max_asr=0.05).evaluate(ba=0.9, asr=0.25)
    lines = d.summary().splitlines()
    assert lines[0] == "gate FAILED"
    assert lines[1] == "  [   pass] benign_accuracy: 90.00% >= 80.00%"
    assert lines[2] == "  [   fail] attack_success_rate: 25.00% <= 5.00%"
    assert lines[3] == "  [skipped] benign_accuracy_drop: n/a <= 3.00%"
    assert d.rules[1].message == "attack_success_rate = 25.00% violates <= 5.00%"
    assert d.rules[0].message == "benign_accuracy = 90.00% meets >= 80.00%"
    assert GatePolicy(max_asr=0.5).evaluate(ba=0.9, asr=0.1).summary().startswith("gate PASSED")


def test_validator_applies_policy() -> None:
    pol = GatePolicy(min_ba=0.85, max_asr=0.5)
    rep = Validator(CodeModel(), policy=pol).run(make_loader(), trigger=TRIGGER, target=TARGET)
    assert rep.decision is not None
    assert rep.passed is False
    statuses = [r.status for r in rep.decision.rules]
    assert statuses == ["pass", "fail", "skipped", "pass", "pass"]
    assert rep.decision.rules[-1].rule_id == "HK-DATA-002"  # better than a constant guess
    assert rep.decision.rules[1].value == pytest.approx(0.8)
    # the immune images keep their own classes: none is moved to another class
    assert rep.decision.rules[3].rule == "triggered_class_share"
    assert rep.decision.rules[3].value == 0.0
    assert "gate FAILED" in rep.summary()
    # A per-run policy (dict) overrides the Validator's; a baseline enables the drop rule.
    rep = Validator(CodeModel(), policy=pol).run(
        make_loader(),
        trigger=TRIGGER,
        target=TARGET,
        policy={"min_ba": 0.85, "max_asr": 0.9, "max_ba_drop": 0.05},
        baseline_ba=0.92,
    )
    assert rep.passed is True
    assert rep.baseline_ba == 0.92
    assert rep.decision is not None
    assert rep.decision.rules[2].value == pytest.approx(0.02)


def test_redirected_backdoor_fails_the_trigger_share_rule() -> None:
    """ASR 0 % is not a removal when the trigger still moves the images to one other class."""
    x = make_images(immune=torch.zeros(20, dtype=torch.bool))
    loader = [(x, LABELS)]
    rep = Validator(CodeModel(mode="redirect"), policy=GatePolicy()).run(
        loader, trigger=TRIGGER, target=TARGET
    )
    assert rep.asr == 0.0
    # every triggered image goes to class 2: classes 1 and 3 (10 of 15) are moved there;
    # class 2's own five are not counted (with few classes they alone would dominate)
    assert rep.trigger_top_class == 2
    assert rep.trigger_top_share is not None
    assert rep.trigger_top_share.successes == 10
    assert rep.trigger_top_share.total == 15
    assert rep.ra == pytest.approx(5 / 15)
    assert rep.passed is False
    assert rep.decision is not None
    assert [r.rule_id for r in rep.decision.failed_rules] == ["HK-ASR-003"]
    assert "triggered -> one other class (class 2): 66.67%" in rep.summary()
    # the rule can be switched off; a backdoor to its target and a clean model move nothing
    off = Validator(CodeModel(mode="redirect"), policy={"max_trigger_share": None}).run(
        loader, trigger=TRIGGER, target=TARGET
    )
    assert off.passed is True
    for model in (CodeModel(), CodeModel(mode="always")):
        rep = Validator(model).run(loader, trigger=TRIGGER, target=TARGET)
        assert rep.trigger_top_class is None
        assert rep.trigger_top_share is not None
        assert rep.trigger_top_share.value == 0.0
    assert GatePolicy().evaluate(ba=0.9, asr=0.0, trigger_share=0.5).passed is True
    assert GatePolicy().evaluate(ba=0.9, asr=0.0, trigger_share=0.51).passed is False
    with pytest.raises(ConfigError, match="trigger_share"):
        GatePolicy().evaluate(ba=0.9, trigger_share=60)


def test_baseline_ba_outside_unit_interval_is_rejected() -> None:
    """Regression: a percent (90) used to be taken as a fraction (a BA drop of 8910%)."""
    for bad in (90, 1.01, -0.1):
        with pytest.raises(ConfigError, match="baseline_ba"):
            Validator(CodeModel(), policy={"max_ba_drop": 0.05}).run(make_loader(), baseline_ba=bad)
    rep = Validator(CodeModel()).run(make_loader(), baseline_ba=1.0)
    assert rep.baseline_ba == 1.0


def test_validator_policy_without_trigger_skips_asr() -> None:
    rep = Validator(CodeModel(), policy={"max_asr": 0.0}).run(make_loader())
    assert rep.passed is True
    assert rep.decision is not None
    assert rep.decision.rules[0].status == "skipped"
    rep = Validator(CodeModel(), policy={"max_asr": 0.0, "require_all_rules": True}).run(
        make_loader()
    )
    assert rep.passed is False


def test_use_upper_confidence_bound() -> None:
    """ASR 0/15 passes max_asr=0.1 by its point estimate but not by the Wilson upper bound."""
    immune = torch.ones(20, dtype=torch.bool)
    x = make_images(immune=immune)
    loader = [(x, LABELS)]
    point = Validator(CodeModel(), policy={"max_asr": 0.1}).run(
        loader, trigger=TRIGGER, target=TARGET
    )
    assert point.asr == 0.0
    assert point.passed is True
    ucb = Validator(CodeModel(), policy={"max_asr": 0.1, "use_upper_confidence_bound": True}).run(
        loader, trigger=TRIGGER, target=TARGET
    )
    assert ucb.asr == 0.0
    assert ucb.passed is False
    assert ucb.decision is not None
    asr_rule = ucb.decision.rules[0]
    assert asr_rule.rule == "attack_success_rate"
    assert asr_rule.value == pytest.approx(wilson_interval(0, 15)[1])
    assert asr_rule.value == pytest.approx(0.2039, abs=1e-4)


def test_gate_models_are_frozen() -> None:
    d = GatePolicy().evaluate(ba=0.9, asr=0.0)
    with pytest.raises(pydantic.ValidationError):  # frozen
        d.passed = False  # type: ignore[misc]
    assert isinstance(d, GateDecision)
    assert isinstance(d.rules[0], RuleResult)


# ----------------------------------------------------------------------------- Validator API


def test_validator_with_plain_sequential() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 16), nn.ReLU(), nn.Linear(16, K))
    x = torch.rand(24, 3, 8, 8)
    y = torch.arange(24) % K
    with torch.no_grad():
        pred = net(x).argmax(1)
        pred_t = net(TRIGGER(x)).argmax(1)
    rep = Validator(net, num_classes=K).run([(x[:10], y[:10]), (x[10:], y[10:])])
    assert rep.ba == pytest.approx(float((pred == y).float().mean()))
    rep = Validator(net).run([(x, y)], trigger=TRIGGER, target=1)
    keep = y != 1
    assert rep.attack_success_rate is not None
    assert rep.attack_success_rate.total == int(keep.sum())
    assert rep.asr == pytest.approx(float((pred_t[keep] == 1).float().mean()))
    assert rep.ra == pytest.approx(float((pred_t[keep] == y[keep]).float().mean()))
    assert rep.model.model_class == "torch.nn.modules.container.Sequential"
    assert rep.model.num_parameters == sum(p.numel() for p in net.parameters())


def test_validator_accepts_callable_trigger_and_image_dataset() -> None:
    ds = hk.ImageDataset(make_images(), LABELS)

    def stamp(x: Tensor) -> Tensor:
        out = x.clone()
        out[:, :, -1, -1] = 1.0
        return out

    rep = Validator(CodeModel()).run(ds.loader(batch_size=6), trigger=stamp, target=TARGET)
    assert rep.asr == pytest.approx(0.8)
    assert rep.trigger is not None
    assert rep.trigger["kind"] == "callable"


def test_trigger_without_target_and_target_without_trigger() -> None:
    v = Validator(CodeModel())
    with pytest.raises(ConfigError, match="trigger and target go together"):
        v.run(make_loader(), trigger=TRIGGER)
    with pytest.raises(ConfigError, match="trigger and target go together"):
        v.run(make_loader(), target=0)


def test_model_output_size_mismatch() -> None:
    with pytest.raises(ModelCompatibilityError, match="num_classes=5"):
        Validator(CodeModel(), num_classes=5).run(make_loader())


def test_model_not_returning_logits() -> None:
    class Bad(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            return x.mean(dim=(2, 3, 1))

    with pytest.raises(ModelCompatibilityError, match="logits"):
        Validator(Bad()).run(make_loader())


@pytest.mark.parametrize("target", [K, 7, -1, {0: 4}, {5: 0}])
def test_target_out_of_range(target: object) -> None:
    with pytest.raises(ConfigError):
        Validator(CodeModel()).run(make_loader(), trigger=TRIGGER, target=target)  # type: ignore[arg-type]


@pytest.mark.parametrize("target", [True, "0", 0.0, [0]])
def test_target_wrong_type(target: object) -> None:
    with pytest.raises(ConfigError):
        Validator(CodeModel()).run(make_loader(), trigger=TRIGGER, target=target)  # type: ignore[arg-type]


def test_empty_loader() -> None:
    with pytest.raises(DataError, match="no batches"):
        Validator(CodeModel()).run([])


def test_bad_loader_inputs() -> None:
    v = Validator(CodeModel())
    with pytest.raises(DataError):
        v.run(torch.zeros(3, 3, 8, 8))  # type: ignore[arg-type]
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        v.run([(make_images() * 255, LABELS)])
    with pytest.raises(DataError):  # label 4 for a 4-class model
        v.run([(make_images(), LABELS + 1)])
    with pytest.raises(DataError):
        Validator(CodeModel(), num_classes=K).run([(make_images(), LABELS + 1)])


@pytest.mark.parametrize("obj", [lambda x: x, "small-cnn", None, 3])
def test_non_module_model(obj: object) -> None:
    with pytest.raises(ModelCompatibilityError, match=r"nn\.Module"):
        Validator(obj)  # type: ignore[arg-type]


def test_num_classes_validated() -> None:
    with pytest.raises(ConfigError):
        Validator(CodeModel(), num_classes=1)


def test_bad_runtime_and_policy() -> None:
    with pytest.raises(ConfigError):
        Validator(CodeModel(), runtime={"device": "tpu"})
    with pytest.raises(ConfigError):
        Validator(CodeModel(), runtime={"nope": 1})
    with pytest.raises(ConfigError):
        Validator(CodeModel(), policy={"max_asr": 2})
    with pytest.raises(ConfigError):
        Validator(CodeModel()).run(make_loader(), policy={"min_ba": -1})


def test_functional_twins_agree_with_report() -> None:
    model = CodeModel()
    rep = Validator(model).run(make_loader(), trigger=TRIGGER, target=TARGET)
    assert benign_accuracy(model, make_loader()) == pytest.approx(rep.ba) == pytest.approx(0.9)
    assert attack_success_rate(model, make_loader(), TRIGGER, TARGET) == pytest.approx(rep.asr)
    assert robust_accuracy(model, make_loader(), TRIGGER, TARGET) == pytest.approx(rep.ra)
    mapping = {c: (c + 1) % K for c in range(K)}
    shift = CodeModel(mode="shift")
    rep = Validator(shift).run(make_loader(), trigger=TRIGGER, target=mapping)
    assert attack_success_rate(shift, make_loader(), TRIGGER, mapping) == pytest.approx(rep.asr)
    assert robust_accuracy(shift, make_loader(), TRIGGER, mapping) == pytest.approx(rep.ra)
    # The hk top-level names are the same functions.
    assert hk.benign_accuracy is benign_accuracy
    assert hk.attack_success_rate is attack_success_rate
    assert hk.robust_accuracy is robust_accuracy


def test_functional_twins_clamp_callable_triggers_like_the_validator() -> None:
    """Regression: the functional metrics used to pass a plain callable trigger unclamped."""

    class OverRange(CodeModel):
        """Sends every image with a pixel above 1.0 (impossible for valid pixels) to 1."""

        def forward(self, x: Tensor) -> Tensor:
            out = super().forward(x)
            over = x.flatten(1).amax(1) > 1.0
            out[over] = F.one_hot(torch.full_like(over.long()[over], 1), K).float() * 10
            return out

    def brighten(x: Tensor) -> Tensor:
        return x + 0.9  # unclamped: values up to 1.15

    model = OverRange()
    rep = Validator(model).run(make_loader(), trigger=brighten, target=1)
    assert rep.asr == 0.0  # clamped pixels: the model predicts 0 or 3, never 1
    functional = attack_success_rate(model, make_loader(), brighten, 1)
    assert functional == pytest.approx(rep.asr)  # unclamped: 1.0


def test_functional_asr_raises_when_nothing_is_eligible() -> None:
    only_target = [(make_images()[:5], LABELS[:5])]
    with pytest.raises(DataError, match="eligible"):
        attack_success_rate(CodeModel(), only_target, TRIGGER, TARGET)
    with pytest.raises(DataError, match="eligible"):
        robust_accuracy(CodeModel(), only_target, TRIGGER, TARGET)


def test_report_json_round_trip() -> None:
    rep = Validator(CodeModel(), policy={"min_ba": 0.5}).run(
        make_loader(), trigger=TRIGGER, target=TARGET, baseline_ba=0.9
    )
    text = rep.to_json()
    payload = json.loads(text)
    assert payload["report_type"] == "validation"
    assert payload["benign_accuracy"]["value"] == pytest.approx(0.9)
    assert payload["attack_success_rate"]["total"] == 15
    back = ValidationReport.model_validate_json(text)
    assert back == rep
    assert back.ba == rep.ba
    assert back.asr == rep.asr
    assert back.passed == rep.passed
    # All-to-all: the mapping's keys become strings and survive the round trip.
    mapping = {c: (c + 1) % K for c in range(K)}
    rep = Validator(CodeModel(mode="shift")).run(make_loader(), trigger=TRIGGER, target=mapping)
    assert ValidationReport.model_validate_json(rep.to_json()) == rep


def test_report_save(tmp_path: object) -> None:
    from pathlib import Path

    rep = Validator(CodeModel()).run(make_loader())
    path = rep.save(Path(str(tmp_path)) / "sub" / "rep.json")
    assert ValidationReport.model_validate_json(path.read_text()) == rep


def test_report_json_round_trip_when_no_image_is_eligible_for_asr() -> None:
    """Only target-class images: ASR has total 0, and the report still round-trips.

    Regression: the empty rate used to be NaN, written as JSON null and rejected on load.
    """
    only_target = [(make_images()[:5], LABELS[:5])]
    rep = Validator(CodeModel()).run(only_target, trigger=TRIGGER, target=TARGET)
    assert rep.attack_success_rate is not None
    assert rep.attack_success_rate.total == 0
    assert rep.asr is None
    assert rep.ra is None
    back = ValidationReport.model_validate_json(rep.to_json())
    assert back == rep
    assert back.attack_success_rate is not None
    assert back.attack_success_rate.total == 0
    assert back.attack_success_rate.value is None
    assert "ASR n/a" in rep.summary()
    # A gate cannot judge an unmeasurable ASR: skipped, or failed with require_all_rules.
    gated = Validator(CodeModel(), policy={"max_asr": 0.1}).run(
        only_target, trigger=TRIGGER, target=TARGET
    )
    assert gated.decision is not None
    assert gated.decision.rules[0].status == "skipped"


def _bn_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Dropout(0.5),
        nn.Linear(4 * 8 * 8, K),
    )


def test_validator_restores_training_flag() -> None:
    net = _bn_net().train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    Validator(net).run(make_loader(), trigger=TRIGGER, target=TARGET)
    assert all(m.training for m in net.modules())
    after = net.state_dict()
    # Evaluated in eval mode: BatchNorm running stats were not updated.
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_validator_restores_mixed_submodule_training_flags() -> None:
    """Regression: model.train(was_training) used to overwrite per-submodule flags."""
    net = _bn_net().train()
    net[1].eval()  # frozen BatchNorm, a common fine-tuning setup
    flags = [m.training for m in net.modules()]
    Validator(net).run(make_loader(), trigger=TRIGGER, target=TARGET)
    assert [m.training for m in net.modules()] == flags


def test_validator_restores_eval_flag_and_runs_in_eval() -> None:
    seen: list[bool] = []

    class Spy(CodeModel):
        def forward(self, x: Tensor) -> Tensor:
            seen.append(self.training)
            return super().forward(x)

    m = Spy()
    m.train()
    Validator(m).run(make_loader(), trigger=TRIGGER, target=TARGET)
    assert seen
    assert not any(seen)
    assert m.training is True
    m.eval()
    Validator(m).run(make_loader())
    assert m.training is False


def test_validator_keeps_device_on_cpu() -> None:
    m = CodeModel()
    param = m.scale
    Validator(m, runtime={"device": "cpu"}).run(make_loader())
    assert m.scale is param
    assert m.scale.device.type == "cpu"


@pytest.mark.gpu
def test_validator_restores_device_after_cuda_run() -> None:
    m = CodeModel()
    rep = Validator(m, runtime={"device": "cuda"}).run(make_loader(), trigger=TRIGGER, target=0)
    assert rep.asr == pytest.approx(0.8)
    assert m.scale.device.type == "cpu"


def test_chance_check_compares_with_predictions_unrelated_to_the_images() -> None:
    from hardenkit.validate import chance_check

    balanced = torch.arange(4).repeat(25)  # 100 images, chance 25 %
    assert chance_check(26, balanced, 4).above is False  # 26 %: not better than guessing
    assert chance_check(45, balanced, 4).above is True
    skewed = torch.tensor([0] * 80 + [1] * 20)  # a constant "0" gets 80 %
    check = chance_check(82, skewed, 2)
    assert check.chance == pytest.approx(0.8)
    assert check.above is False
    assert "a constant guess of the largest class 80.00%" in check.describe()
    # with the model's prediction frequencies, chance is what predictions unrelated to the
    # images would score: 0.8 * 0.8 + 0.2 * 0.2 = 68 %, and 82 % is above it
    informed = chance_check(82, skewed, 2, predicted_counts=torch.tensor([80, 20]))
    assert informed.chance == pytest.approx(0.68)
    assert informed.majority == pytest.approx(0.8)
    assert informed.above is True
    # a constant "0" agrees with the labels exactly as often as chance says
    constant = chance_check(80, skewed, 2, predicted_counts=torch.tensor([100, 0]))
    assert constant.chance == pytest.approx(0.8)
    assert constant.above is False
    one_class = chance_check(40, torch.zeros(50, dtype=torch.long), 4)
    assert (one_class.classes, one_class.above) == (1, None)
    assert "all belong to one class" in one_class.describe()
    with pytest.raises(ConfigError):
        chance_check(82, skewed, 2, predicted_counts=torch.tensor([0, 0]))
    assert chance_check(1, torch.arange(4), 4).above is None  # one image per class
    with pytest.raises(DataError):
        chance_check(0, torch.zeros(0, dtype=torch.long), 4)
    with pytest.raises(ConfigError):
        chance_check(5, balanced[:4], 4)


def test_a_good_model_on_imbalanced_labels_is_not_taken_for_a_guess() -> None:
    """95 % of the labels are class 0 and the model is right on 96 % of the images. Its
    accuracy barely beats a constant "0" (the 95 % lower bound, 94.6 %, is under 95 %), which
    before stop 45 failed HK-DATA-002 as "the images or labels do not fit the model"; its
    predictions carry the labels, so against chance with its own prediction frequencies it
    passes."""
    from hardenkit.validate import chance_check

    y = torch.tensor([0] * 950 + [1] * 17 + [2] * 17 + [3] * 16)
    e = y.clone()
    e[:30] = 1  # 30 class-0 images the model gets wrong
    e[950:960] = 0  # and 10 of the others
    x = torch.zeros(1000, 3, 4, 4)
    x[:, 0, 0, 0] = e.float() / 10
    loader = [(x[i : i + 250], y[i : i + 250]) for i in range(0, 1000, 250)]
    rep = Validator(CodeModel(), policy=GatePolicy(max_asr=None)).run(loader)
    assert rep.ba == pytest.approx(0.96)
    assert chance_check(960, y, K).above is False  # the constant guess alone: a false alarm
    assert rep.above_chance is True
    assert rep.chance_accuracy is not None
    assert rep.chance_accuracy < 0.95
    rule = rep.decision.rules[-1]  # type: ignore[union-attr]
    assert (rule.rule_id, rule.status) == ("HK-DATA-002", "pass")
    assert "a constant guess of the largest class 95.00%" in rule.message
    # the same labels with a model that says "0" for every image: at chance
    const = Validator(CodeModel(mode="always"), policy=GatePolicy(max_asr=None)).run(loader)
    assert const.above_chance is False
    assert const.passed is False


def test_a_model_at_chance_fails_hk_data_002_and_says_why() -> None:
    """A constant prediction (what a shifted class order or wrong pixels look like) is no
    measurement: the report says so and the policy fails it even with no other rule broken."""
    at_chance = Validator(CodeModel(mode="always"), policy=GatePolicy(max_asr=None)).run(
        make_loader()
    )
    assert at_chance.above_chance is False
    assert at_chance.chance_accuracy == pytest.approx(0.25)
    assert at_chance.passed is False
    rule = at_chance.decision.rules[-1]  # type: ignore[union-attr]
    assert (rule.rule_id, rule.status, rule.comparison) == ("HK-DATA-002", "fail", ">")
    assert "WARNING: BA is no better than chance" in at_chance.summary()
    fine = Validator(CodeModel(), policy=GatePolicy(max_asr=None)).run(make_loader())
    assert fine.above_chance is True
    assert fine.passed is True
    assert "WARNING" not in fine.summary()
    off = Validator(
        CodeModel(mode="always"), policy=GatePolicy(max_asr=None, require_above_chance=False)
    ).run(make_loader())
    assert off.passed is True
    assert off.above_chance is False  # still reported
