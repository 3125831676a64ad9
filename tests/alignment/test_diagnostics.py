"""Reward-hacking diagnostics on hand-made answers: the echoes and repetitions the
default reward was seen to pay for are caught, ordinary replies are not."""

import math

import pytest

from grao_pipeline.alignment.diagnostics import distinct_n, distinct_n_ci, echo_fraction, echoes


@pytest.mark.parametrize("question, answer, fraction", [
    ("i like to play volleyball what about you?", "i like to play volleyball", 1.0),
    ("And the pumpkin spice?", "and the pumpkin spice", 1.0),
    ("do you like tea?", "yes, green tea every morning", 0.2),
    ("hi?", "", 0.0),
])
def test_echo_fraction_is_the_share_of_answer_words_taken_from_the_question(question, answer, fraction):
    assert echo_fraction(question, answer) == pytest.approx(fraction)


def test_an_answer_is_an_echo_from_80_percent_copied_words():
    questions = ["hey thanks! what did you learn lately that was interesting?"] * 3
    answers = ["hey thanks! what did you learn lately",           # 7/7: an echo
               "what did you learn lately? chemistry",           # 5/6 = 0.83: an echo
               "i learned that plankton make our oxygen"]        # 1/7
    assert echoes(questions, answers).tolist() == [1.0, 1.0, 0.0]


def test_distinct_2_falls_with_repetition():
    varied = ["i like soccer and tennis", "my dog is called rex"]
    looping = ["i love playing sports. i love playing sports. i love playing sports."]
    assert distinct_n(varied) == 1.0
    assert distinct_n(looping) == pytest.approx(4 / 11)
    assert math.isnan(distinct_n(["one"]))


def test_distinct_2_interval_brackets_its_value():
    answers = ["i like tea", "i like coffee", "tea is nice", "i like tea"]
    ci = distinct_n_ci(answers, resamples=200, seed=0)
    assert ci["ci_low"] <= ci["value"] <= ci["ci_high"]
    assert ci["value"] == pytest.approx(distinct_n(answers))


def test_distinct_2_of_answers_without_two_words_is_null_not_nan():
    assert distinct_n_ci(["yes", "", "no"]) == {"value": None, "ci_low": None, "ci_high": None}
