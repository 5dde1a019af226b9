"""The soak benchmark: a batch under injected endpoint faults, a kill -9 and a resume (``run``)."""
