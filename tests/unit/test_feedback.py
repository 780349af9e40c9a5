"""Feedback bodies, report grouping and the merge into usage rows (README "Feedback")."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from broker.errors import InvalidRequest
from broker.feedback.store import merge_feedback, parse_feedback_group_by
from ingress.feedback import MAX_COMMENT_CHARS, MAX_LABEL_CHARS, BatchLineFeedback, Feedback


@pytest.mark.parametrize("score", [-1, -0.25, 0, 0.5, 1, 1.0])
def test_scores_from_minus_one_to_one_are_accepted(score: float) -> None:
    assert Feedback.model_validate({"score": score}).score == score


@pytest.mark.parametrize("score", [-1.01, 1.5, 5, True, False, "0.5", None,
                                   float("nan"), float("inf")])
def test_other_scores_are_refused(score: object) -> None:
    with pytest.raises(ValidationError):
        Feedback.model_validate({"score": score})


def test_score_is_required_and_unknown_fields_are_refused() -> None:
    with pytest.raises(ValidationError):
        Feedback.model_validate({"label": "good"})
    with pytest.raises(ValidationError):
        Feedback.model_validate({"score": 1, "rating": 5})


def test_label_and_comment_are_bounded() -> None:
    Feedback.model_validate({"score": 1, "label": "x" * MAX_LABEL_CHARS,
                             "comment": "y" * MAX_COMMENT_CHARS})
    with pytest.raises(ValidationError):
        Feedback.model_validate({"score": 1, "label": "x" * (MAX_LABEL_CHARS + 1)})
    with pytest.raises(ValidationError):
        Feedback.model_validate({"score": 1, "label": ""})
    with pytest.raises(ValidationError):
        Feedback.model_validate({"score": 1, "comment": "y" * (MAX_COMMENT_CHARS + 1)})


def test_batch_line_feedback_needs_a_custom_id() -> None:
    assert BatchLineFeedback.model_validate({"custom_id": "r1", "score": 0}).custom_id == "r1"
    with pytest.raises(ValidationError):
        BatchLineFeedback.model_validate({"score": 0})


def test_group_by_accepts_variant_and_refuses_unknown_or_repeated_names() -> None:
    assert parse_feedback_group_by("model, deployment,variant") == (
        "model", "deployment", "variant")
    assert parse_feedback_group_by(None) == ()
    for raw in ("model,hour", "model,model"):
        with pytest.raises(InvalidRequest):
            parse_feedback_group_by(raw)


def test_merge_adds_feedback_to_matching_usage_groups_and_keeps_feedback_only_groups() -> None:
    usage = [{"model": "a", "calls": 3}, {"model": "b", "calls": 1}]
    feedback = [{"model": "a", "feedback_count": 2, "feedback_mean_score": 0.25},
                {"model": "c", "feedback_count": 1, "feedback_mean_score": -1.0}]
    assert merge_feedback(usage, feedback, ("model",)) == [
        {"model": "a", "calls": 3, "feedback_count": 2, "feedback_mean_score": 0.25},
        {"model": "b", "calls": 1, "feedback_count": 0, "feedback_mean_score": None},
        {"model": "c", "feedback_count": 1, "feedback_mean_score": -1.0},
    ]
