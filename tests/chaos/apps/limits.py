"""The guards' parameters in tests/chaos/apps/audited.py, which the auditor reads too
(audited.py itself only imports inside a worker: it reads the worker's environment)."""

LOCK_TTL = 2.0
CAP = 2
CAP_TTL = 2.0
RATE = 5.0
BURST = 2
