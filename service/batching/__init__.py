"""Step-level batching (the scheduler moved into this package; its modules follow)."""

from service.batching.scheduler import BatchScheduler, CallCosts, TickStats

__all__ = ["BatchScheduler", "CallCosts", "TickStats"]
