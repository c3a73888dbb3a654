"""Cluster side of surge: typed configuration, the tiny model, key management, local Ray clusters."""
