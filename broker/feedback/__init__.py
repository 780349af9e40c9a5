"""Feedback on answers: scores per request or batch line, by variant (README "Feedback")."""
