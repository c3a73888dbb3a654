"""Autoscaling: the queue-depth policy, promo-calendar pre-warm and the policy simulator (later issues)."""
