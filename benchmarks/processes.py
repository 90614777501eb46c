"""What the benchmark scripts share about the server processes they start: a free loopback port, a process's
children (the workers of a master), and its resident memory."""
from __future__ import annotations

import os
import socket


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def children(pid: int) -> list[int]:
    """The child processes of ``pid`` (from /proc)."""
    kids = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            kids += [int(p) for p in f.read().split()]
    return kids


def rss(pid: int) -> str:
    """VmRSS of ``pid`` and its anonymous part, in MB, as text."""
    with open(f"/proc/{pid}/status") as f:
        fields = dict(line.split(":", 1) for line in f)
    return f"{int(fields['VmRSS'].split()[0]) // 1024} MB (anon {int(fields['RssAnon'].split()[0]) // 1024} MB)"
