"""Helpers shared by the test modules of every folder (tests/ is on sys.path: see [tool.pytest.ini_options] in
pyproject.toml), one job per module:

- ``paths``: the repository's root and the bundled servables
- ``processes``: free ports, child processes, server scripts run in their own process, their workers, bounded waits
- ``servables``: the servable directories the tests serve (servable_config.py files and models)
- ``model_files``: small ONNX models built at test time
- ``starts``: start_servables run in a process of its own, and how that start ended
- ``checks``: what a server must still answer after an error, on each protocol
- ``rest``: plain HTTP requests over TCP, HTTPS and unix sockets
- ``tls``: certificates, and the add servable behind TLS listeners
- ``examples``: the example scripts of example/<name>/ as a server and as a client
- ``channel``: the shared-memory channel of the C core, driven from threads and child processes
"""
