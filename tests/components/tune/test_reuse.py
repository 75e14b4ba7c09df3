"""Whether retraining may reuse an earlier search: the rule on plain values, no store and no model."""
from __future__ import annotations

from components.tune.config import TunerConfig
from components.tune.reuse import PreviousSearch, reuse_decision, search_space_digest

DAY = 86400.0
PREVIOUS = PreviousSearch("run-1", "pipeline-1", started=1_000_000.0, best_hyperparameters={"mlp.units_0": 8},
                          best_trial_id="0003", best_score=0.97, tuning_uri="/t", tuning_digest="sha256:t")


def test_a_recent_search_over_the_same_space_is_reused():
    assert reuse_decision(PREVIOUS, TunerConfig(), now=PREVIOUS.started + 6.9 * DAY) is None


def test_an_old_search_is_searched_again_unless_age_does_not_matter():
    assert reuse_decision(PREVIOUS, TunerConfig(), now=PREVIOUS.started + 7.5 * DAY) == (
        "the last search (run run-1) is 7.5 days old, more than tuner.retune_after_days=7")
    assert reuse_decision(PREVIOUS, TunerConfig(retune_after_days=None), now=PREVIOUS.started + 400 * DAY) is None


def test_nothing_to_reuse_or_tuning_off_searches_and_says_why():
    assert reuse_decision(None, TunerConfig()) == "no earlier search over this search space"
    assert reuse_decision(PREVIOUS, TunerConfig(enabled=False)) == "tuning is off"


def test_the_search_space_digest_changes_with_the_space_and_the_objective_only():
    base = search_space_digest(TunerConfig())
    assert search_space_digest(TunerConfig(max_epochs=20, seed=7)) == base
    assert search_space_digest(TunerConfig(objective="val_loss")) != base
    wider = TunerConfig.model_validate({"search_space": {"architecture": {"type": "choice", "values": ["mlp"],
                                                                          "branches": {"mlp": {"units": {
                                                                              "type": "int", "min": 8, "max": 512}}}}}})
    assert search_space_digest(wider) != base
