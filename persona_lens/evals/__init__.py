"""Evaluations built on persona_lens (``creativity``: BILLY's multi-perspective creativity benchmark)."""
