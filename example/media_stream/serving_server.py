"""Serve the frames servable to video-analytics media streams (MediaGraphExtension/ProcessMediaStream) on
127.0.0.1:5500; a stream that names no method in its descriptor runs frames.intensity (light or dark).

    python example/media_stream/serving_server.py [ADDRESS]      # ADDRESS: host:port or unix:/path
Stop it with Ctrl-C.
"""
import os
import sys

from mindserve import server

SERVABLES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "servables")


def start() -> None:
    """Start the frames workers and the gRPC server on the address given on the command line."""
    address = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:5500"
    server.start_servables(server.ServableStartConfig(servable_directory=SERVABLES, servable_name="frames",
                                                      device_ids=(0, 1)))
    # allow_client_shm: clients on this host may send frames through shared memory (serving_client.py
    # --shared-memory)
    server.start_grpc_server(address=address, media_stream=server.MediaStreamConfig("frames", "intensity"),
                             allow_client_shm=True)


if __name__ == "__main__":
    start()
