"""The API that a servable's ``servable_config.py`` uses to declare models and register methods.

Example::

    from mindserve.server import register
    model = register.declare_model(model_file="tensor_add.onnx", model_format="ONNX", with_batch_dim=False)

    @register.register_method(output_names=["y"])
    def add_common(x1, x2):
        return register.add_stage(model, x1, x2, outputs_count=1)

``model_format`` is "ONNX" (ONNX Runtime) or "MindIR" (MindSpore); ``declare_model(..., options={...})`` sets
per-model runtime options (``thread_num``, ...); a list of files makes a model of several subgraphs, run by
``Model.call(..., subgraph=i)``. ``seldon_classifier(method, classes, probabilities)`` answers Seldon's
Classifier/Predict with a method. A stage raises ``InputError`` for a bad client input, which is then
answered as the client's error (INVALID_ARGUMENT, HTTP 400) rather than a failure of the servable.
``version_path()`` is the folder of the version being served, for a stage's own files.
"""

from mindserve._servable.definition import InputError, Model, add_stage, declare_model, register_method, version_path
from mindserve._servable.seldon import seldon_classifier

__all__ = ["InputError", "Model", "add_stage", "declare_model", "register_method", "seldon_classifier", "version_path"]
