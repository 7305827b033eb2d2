"""The warm-up's answer styles match the reward managers' formats (so a tiny model can earn each recipe's reward)."""

import pytest

from verl_difficulty.models.warmup import target_text, warm_up
from verl_difficulty.rewards.functions import math_acc_format, r1v_acc


@pytest.mark.parametrize("answer", ["3", "red", "2.5"])
def test_each_style_earns_its_reward(answer):
    boxed, tagged = target_text(answer, "boxed"), target_text(answer, "answer")
    assert math_acc_format("synthetic", boxed, answer)["score"] == pytest.approx(1.0)
    assert r1v_acc("synthetic", tagged, answer)["acc"] == 1.0
    assert math_acc_format("synthetic", tagged, answer)["acc"] == 0.0  # no \boxed{}: the P3/P4 reward gives nothing


def test_unknown_style_fails_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="answer style 'latex'"):
        warm_up(str(tmp_path / "missing"), [], style="latex")
