"""Protocol frontends of the master: they parse and validate requests, hand instances to the dispatcher and
encode the answers. ``grpc`` serves MSService on TCP or unix sockets, with optional TLS."""
