"""Metrics and statistics: request counts by door (``requests``), what workers measure (``worker_stats``, read
by the master through ``totals``), and their Prometheus exposition (``exposition``)."""
