"""Access control: who may call what, checked once per request by each transport before any message is read.

- ``config``: what a user configures (AccessConfig, JWTConfig), checked at start.
- ``groups``: the feature groups and the table that puts every RPC and route in one of them.
- ``policy``: the decision for one request (its group, its headers or metadata, its verified client identity),
  independent of the transport; each transport's check layer (``_frontends/grpc/access.py``,
  ``_frontends/rest/access.py``) asks it and answers a denial with the error types of ``mindserve._errors``.
- ``identities``: a client certificate's names, typed (DNS, IP, email, URI, common name), and how configured
  names match them.
- ``backoff``: the per-client back-off of the token endpoints after failed secret checks.
"""
