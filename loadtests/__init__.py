"""Locust scenarios for promo-day spikes and the SLO report (later issues)."""
