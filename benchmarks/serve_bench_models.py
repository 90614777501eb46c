"""Serve the three benchmark models of ../shared/bench/make_models.py (add, mlp, big) as mindserve servables,
each with one method ``predict`` over a model with a batch dim.

    python benchmarks/serve_bench_models.py WORK_DIR ADDRESS [DEVICE_IDS]

WORK_DIR must hold add.onnx, mlp.onnx and big.onnx (run_peers.sh writes them to its work folder); the servable
folders are written under WORK_DIR/mindserve_servables. Prints "listening" once it serves; stop with Ctrl-C.
"""
import os
import shutil
import sys

from mindserve import server

CONFIG = '''from mindserve.server import register

model = register.declare_model(model_file="{model}.onnx", model_format="ONNX", with_batch_dim=True)


@register.register_method(output_names=["y"])
def predict({inputs}):
    return register.add_stage(model, {inputs}, outputs_count=1)
'''
INPUTS = {"add": "x1, x2", "mlp": "x", "big": "x"}


def write_servables(work: str) -> str:
    root = os.path.join(work, "mindserve_servables")
    for name, inputs in INPUTS.items():
        version = os.path.join(root, name, "1")
        os.makedirs(version, exist_ok=True)
        shutil.copyfile(os.path.join(work, f"{name}.onnx"), os.path.join(version, f"{name}.onnx"))
        with open(os.path.join(root, name, "servable_config.py"), "w") as f:
            f.write(CONFIG.format(model=name, inputs=inputs))
    return root


if __name__ == "__main__":
    work, address = sys.argv[1], sys.argv[2]
    device_ids = tuple(int(d) for d in (sys.argv[3] if len(sys.argv) > 3 else "0").split(","))
    root = write_servables(work)
    server.start_servables([server.ServableStartConfig(root, name, device_ids=device_ids) for name in INPUTS])
    server.start_grpc_server(address, max_msg_mb_size=512)
    print("listening", address, flush=True)
