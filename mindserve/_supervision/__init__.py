"""Worker processes seen from the master: starting them, talking to them, noticing when one dies and starting
it again (``worker_process``), and the set of workers that serve one servable version (``servable_workers``)."""
