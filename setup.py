"""Packaging for mindserve.

Besides the pure-Python packages this builds two outputs that are never committed:
- ``mindserve._native``, the C core in ``native/``, through cffi (``cffi_modules``);
- the protobuf modules for the ``.proto`` files in ``mindserve/_proto/``, through grpcio-tools' protoc.
``client/`` is installed as ``mindserve.client``.
"""
import glob
import os

from setuptools import Command, find_packages, setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))


# Protos whose full names other packages also register in protobuf's default pool (tritonclient defines the
# same inference.* messages, Seldon's clients compile seldon.proto): a second file defining a name fails to
# import, so these are compiled to a descriptor set, *.desc, that mindserve loads into a pool of its own
# (mindserve/_proto/private_pool.py).
PRIVATE_POOL_PROTOS = {"grpc_inference.proto", "seldon.proto", "media_graph.proto"}


def generate_protos() -> None:
    """Compile every mindserve/_proto/*.proto into *_pb2.py beside it (message classes only: the gRPC
    services are registered by hand so that mindserve parses and validates requests itself), or into *.desc
    for PRIVATE_POOL_PROTOS."""
    from grpc_tools import protoc

    protos = sorted(glob.glob(os.path.join(HERE, "mindserve", "_proto", "*.proto")))
    include = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    for proto in protos:
        if os.path.basename(proto) in PRIVATE_POOL_PROTOS:
            output = f"--descriptor_set_out={os.path.splitext(proto)[0]}.desc --include_imports"
        else:
            output = f"--python_out={HERE}"
        args = ["protoc", f"-I{HERE}", f"-I{include}", *output.split(), os.path.relpath(proto, HERE)]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed on {proto}")


class BuildProtos(Command):
    """``python setup.py build_protos``: regenerate the protobuf modules in the source tree."""

    user_options: list = []

    def initialize_options(self) -> None:
        pass

    def finalize_options(self) -> None:
        pass

    def run(self) -> None:
        generate_protos()


class BuildPyWithProtos(build_py):
    def run(self) -> None:
        generate_protos()
        super().run()


packages = [p for p in find_packages(include=["mindserve", "mindserve.*"])]
setup(
    name="mindserve",
    version="0.1.0",
    description="Model serving in the style of MindSpore Serving: servables, device workers, gRPC with TLS",
    python_requires=">=3.9",
    packages=packages + ["mindserve.client"],
    package_dir={"mindserve.client": "client"},
    package_data={"mindserve._proto": ["*.proto", "*.desc"], "mindserve": ["py.typed"],
                  "mindserve.client": ["py.typed"]},
    install_requires=[
        "grpcio>=1.76",
        # 1.82 and later need protobuf 7, which tritonclient (protobuf < 7) and this package's pin exclude
        "grpcio-health-checking>=1.76,<1.82",
        "grpcio-reflection>=1.76,<1.82",
        "protobuf>=6.31.1,<7",
        "numpy>=1.23",
        "cffi>=1.16",
        "pyyaml>=6",
    ],
    extras_require={
        "onnx": ["onnxruntime>=1.17"],
        # what the bundled servables need at serving time (digits decodes images with Pillow)
        "examples": ["onnxruntime>=1.17", "Pillow>=9.1"],
        # what example/*/export_model/ needs to make the bundled model files again
        "export": ["onnx>=1.15", "scikit-learn>=1.3", "skl2onnx>=1.16", "Pillow>=9.1"],
        # the REST frontend (start_restful_server)
        "rest": ["aiohttp>=3.9"],
        # the metrics server (start_metrics_server)
        "metrics": ["aiohttp>=3.9", "prometheus-client>=0.20"],
        # bearer tokens (AccessConfig(jwt=...) and consumers' tokens): PyJWT, with cryptography for RS/ES/PS keys
        "auth": ["pyjwt[crypto]>=2.8"],
        # the MindIR backend (model_format="MindIR"); pip picks the newest MindSpore that fits protobuf < 7
        "mindir": ["mindspore>=2.7"],
        # what `mindserve serve` needs for the bundled servables: ONNX Runtime, Pillow for digits, REST
        # Seldon's Classifier with a servable's own request messages: protoc compiles its .proto at start
        "seldon": ["grpcio-tools>=1.76,<1.81"],
        "serve": ["onnxruntime>=1.17", "Pillow>=9.1", "aiohttp>=3.9", "pyjwt[crypto]>=2.8",
                  "grpcio-tools>=1.76,<1.81", "prometheus-client>=0.20"],
        # the tests, in an environment like a user's: MindSpore (which pins numpy < 2) is not among them; the
        # MindIR tests run in an environment of their own, with '.[test,mindir]' (see README's test command)
        "test": ["pytest>=8", "trustme>=1.1", "onnx>=1.15", "onnxruntime>=1.17", "tritonclient[grpc,http]",
                 "Pillow>=9.1", "scikit-learn>=1.3", "aiohttp>=3.9", "hypothesis>=6.100",
                 "pytest-timeout>=2.3", "pytest-xdist>=3.5", "pyjwt[crypto]>=2.8", "grpcio-tools>=1.76,<1.81",
                 "prometheus-client>=0.20", "kubernetes-validate>=1.30",
                 # the README's test command checks types and lint first; pinned, so that a release cannot fail CI
                 "mypy==2.4.1", "ruff==0.17.6"],
    },
    setup_requires=[],
    cffi_modules=["native/build_native.py:ffibuilder"],
    cmdclass={"build_py": BuildPyWithProtos, "build_protos": BuildProtos},
    entry_points={"console_scripts": ["mindserve = mindserve.cli:main"]},
    zip_safe=False,
)
