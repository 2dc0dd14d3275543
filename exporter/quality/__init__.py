"""Reader of bem's function quality metrics (`GET /v3/functions/metrics`), DESIGN section 1.2.

`reader` pages through bem's answer, `decode` reads it item by item, `gauges` exposes the last
good read, `watch` is the leader's loop beside the poll loop. No imports here: the self-metrics
and the status page read `records` without pulling in the rest.
"""
