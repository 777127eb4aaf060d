"""AlgoConfig validation, presets as data, DAPO dynamic sampling."""

import dataclasses

import pytest

from rgpo_fast.algos.dynamic_sampling import dynamic_sampling, informative_groups
from rgpo_fast.algos.presets import AlgoConfig, get_preset, preset_names


def test_every_field_has_help():
    for f in dataclasses.fields(AlgoConfig):
        assert f.metadata.get("help"), f.name


def test_presets_hold_their_defining_choices():
    assert preset_names() == ["cispo", "dapo", "dr_grpo", "ghpo", "grpo", "gspo", "guide",
                              "luffy", "rgpo", "sapo"]
    gspo, cispo, sapo = get_preset("gspo"), get_preset("cispo"), get_preset("sapo")
    assert (sapo.objective, sapo.sapo_tau_pos, sapo.sapo_tau_neg, sapo.loss_agg,
            sapo.guidance) == ("sapo", 1.0, 1.05, "seq-mean-token-mean", "none")
    assert (gspo.objective, gspo.clip_low, gspo.clip_high, gspo.loss_agg) == (
        "gspo", 3e-4, 4e-4, "seq-mean-token-mean")
    assert (cispo.objective, cispo.clip_low, cispo.clip_high) == ("cispo", 1.0, 4.0)
    assert gspo.guidance == cispo.guidance == "none"
    assert AlgoConfig() == get_preset("rgpo").__class__(
        **{**AlgoConfig().to_dict(), "name": "rgpo"}
    )
    rgpo = get_preset("rgpo")
    assert (rgpo.guidance, rgpo.trigger, rgpo.transfer, rgpo.n_segments) == (
        "rgpo",
        "level_or_fail",
        "sft",
        None,  # the rationale's own steps
    )
    assert (rgpo.hint_escalation, rgpo.copies) == ("round", "train")
    assert rgpo.guided_samples(8) == 4 and rgpo.guided_samples(1) == 1
    dapo = get_preset("dapo")
    assert (dapo.clip_low, dapo.clip_high, dapo.loss_agg, dapo.dynamic_sampling) == (
        0.2,
        0.28,
        "token-mean",
        True,
    )
    dr = get_preset("dr_grpo")
    assert (dr.advantage, dr.loss_agg) == ("dr_grpo", "seq-mean-token-sum-norm")
    assert get_preset("ghpo").ghpo_omegas == (0.25, 0.5, 0.75)
    luffy = get_preset("luffy")
    assert (luffy.guidance, luffy.advantage, luffy.luffy_gamma) == ("luffy", "dr_grpo", 0.1)
    guide = get_preset("guide")
    assert (guide.trigger, guide.transfer) == ("all_fail", "is")
    assert get_preset("grpo").guidance == "none"
    assert get_preset("dapo", clip_high=0.3).clip_high == 0.3


def test_loss_config_and_roundtrip():
    cfg = get_preset("dapo", tis_cap=None)
    loss = cfg.loss_config()
    assert loss.clip_high == 0.28 and loss.tis_cap == float("inf")
    assert cfg.loss_config(temperature=0.7).temperature == 0.7
    assert AlgoConfig.from_dict(cfg.to_dict()) == cfg


def test_loss_fields_are_checked_once_by_loss_config():
    """AlgoConfig's loss fields go through LossConfig's bounds (one set of checks)."""
    with pytest.raises(ValueError, match="AlgoConfig.clip_ratio_c must be > 1"):
        get_preset("rgpo", clip_ratio_c=0.5)
    with pytest.raises(ValueError, match="AlgoConfig.kl_estimator='k9' is unknown"):
        get_preset("rgpo", kl_estimator="k9")


@pytest.mark.parametrize(
    "override,field",
    [
        ({"advantage": "ppo"}, "advantage"),
        ({"loss_agg": "sum"}, "loss_agg"),
        ({"transfer": "rl"}, "transfer"),
        ({"hint_placement": "middle"}, "hint_placement"),
        ({"clip_low": 1.5}, "clip_low"),
        ({"n_segments": 1}, "n_segments"),
        ({"hint_escalation": "never"}, "hint_escalation"),
        ({"copies": "half"}, "copies"),
        ({"ghpo_omegas": (0.5, 0.25)}, "ghpo_omegas"),
        ({"success_threshold": 0.0}, "success_threshold"),
        ({"hint_template": "{problem}"}, "hint_template"),
        ({"num_guided": 0}, "num_guided"),
    ],
)
def test_bad_fields_are_named(override, field):
    with pytest.raises(ValueError, match=field):
        get_preset("rgpo", **override)


def test_unknown_preset_and_field():
    with pytest.raises(ValueError, match="valid names: cispo, dapo, dr_grpo"):
        get_preset("ppo")
    with pytest.raises(ValueError, match="bogus"):
        get_preset("rgpo", bogus=1)


def test_informative_groups():
    assert informative_groups([[0, 0, 0], [0, 1, 0], [1, 1, 1], [0.5, 0.5]]) == [
        False,
        True,
        False,
        False,
    ]


def test_dynamic_sampling_drops_and_refills():
    # round 0: 4 groups, 2 informative; round 1: 3 groups, 1 informative; round 2: 2 more
    rounds = {
        0: [("a", [0, 0]), ("b", [0, 1]), ("c", [1, 1]), ("d", [1, 0])],
        1: [("e", [0, 0]), ("f", [1, 0]), ("g", [1, 1])],
        2: [("h", [0, 1]), ("i", [1, 0])],
    }
    calls = []

    def generate(r):
        calls.append(r)
        return rounds[r]

    kept, stats = dynamic_sampling(generate, lambda g: g[1], target_groups=4, max_extra_rounds=3)
    assert [g[0] for g in kept] == ["b", "d", "f", "h"]  # surplus "i" cut
    assert calls == [0, 1, 2]
    assert stats == {"rounds": 3, "generated": 9, "dropped": 4, "kept": 4}


def test_dynamic_sampling_bound_on_rounds():
    """No informative group in any round: the first round's groups come back (the step
    still trains, with zero advantages) and the stats say nothing was kept."""
    first = [[0, 0]]
    kept, stats = dynamic_sampling(lambda r: first if r == 0 else [[1, 1]], lambda g: g, 2,
                                   max_extra_rounds=1)  # fmt: skip
    assert kept == first and stats["rounds"] == 2 and stats["dropped"] == 2
    assert stats["kept"] == 0


def test_dynamic_sampling_stops_when_refills_run_dry():
    calls = []

    def generate(r):
        calls.append(r)
        return [[0, 1]] if r == 0 else []

    kept, stats = dynamic_sampling(generate, lambda g: g, 3, max_extra_rounds=5)
    assert kept == [[0, 1]] and calls == [0, 1] and stats["rounds"] == 2
