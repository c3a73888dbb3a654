"""OpenAI's Batch API: files, batches, and the runner that answers their lines on idle capacity."""

from deployments.batch.api import BatchApi
from deployments.batch.capacity import PoolLoad, Slots, batch_slots
from deployments.batch.lines import InputLine, parse_input
from deployments.batch.store import BatchStore

__all__ = ["BatchApi", "BatchStore", "InputLine", "PoolLoad", "Slots", "batch_slots", "parse_input"]
