"""The owners of clients' shared memory files the server takes besides its own user (``client_shm_owners``): user
names or uids, as the operator lists them. Shared by ``mindserve.server.context`` and the command line's settings
(so this module must stay free of server-side imports)."""

from __future__ import annotations

import pwd
from typing import Any

MAX_UID = (1 << 32) - 2  # (uid_t; -1, all ones, means "no user")


class OwnerError(ValueError):
    """An owner that names no user: the text says which, for the caller to prefix."""


def owner_uid(owner: Any) -> int:
    """The uid ``owner`` stands for: an int in [0, MAX_UID] as itself, a str as the user of that name on this
    host; OwnerError otherwise."""
    if isinstance(owner, int) and not isinstance(owner, bool):
        if not 0 <= owner <= MAX_UID:
            raise OwnerError(f"uid {owner} is not in [0, {MAX_UID}]")
        return owner
    if not isinstance(owner, str) or not owner:
        raise OwnerError(f"expected a user name or a uid, got {owner!r}")
    try:
        return pwd.getpwnam(owner).pw_uid
    except KeyError:
        raise OwnerError(f"no user '{owner}' on this host") from None


def owner_uids(owners: Any) -> list[int]:
    """The uids of a list (tuple, set) of owners; OwnerError for anything else, or for one that names no user."""
    if isinstance(owners, (str, bytes)) or not isinstance(owners, (list, tuple, set, frozenset)):
        raise OwnerError(f"expected a list of user names or uids, got {owners!r}")
    return [owner_uid(owner) for owner in owners]
