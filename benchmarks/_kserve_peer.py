"""The peer row of benchmarks/serving.py: KServe's Python model server on the same ONNX model.

    <kserve venv>/bin/python benchmarks/_kserve_peer.py MODEL_NAME path/to/model.onnx HTTP_PORT GRPC_PORT THREADS

Run by benchmarks/serving.py with the interpreter of a separate virtual environment holding ``kserve==0.21.0``
and ``onnxruntime`` (KServe pins its own FastAPI and uvicorn, so it never shares the project's environment):

    python -m venv ~/.cache/mlaas4hep/kserve-venv
    ~/.cache/mlaas4hep/kserve-venv/bin/pip install kserve==0.21.0 onnxruntime==1.32.0

The model answers the Open Inference Protocol v2 (REST on HTTP_PORT, gRPC on GRPC_PORT) with the same output
as ``mlaas4hep serve``: ``score`` [N] float32, the network's sigmoid output for each event. One ONNX Runtime
session with THREADS intra-op threads, as the project's server runs it; KServe's server has no dynamic batching
and no authentication (the project's server checks a token on every request).
"""

from __future__ import annotations

import sys


def main() -> None:
    name, path, http_port, grpc_port, threads = sys.argv[1:6]
    sys.argv = sys.argv[:1]  # kserve parses the command line when imported
    import kserve
    import numpy as np
    import onnxruntime as ort
    from kserve import InferOutput, InferRequest, InferResponse

    class OnnxModel(kserve.Model):
        def __init__(self) -> None:
            super().__init__(name)
            options = ort.SessionOptions()
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
            self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
            self.input = self.session.get_inputs()[0].name
            self.ready = True

        async def predict(self, payload: InferRequest, headers=None, response_headers=None) -> InferResponse:
            x = payload.inputs[0].as_numpy().astype(np.float32, copy=False)
            score = self.session.run(None, {self.input: x})[0].reshape(len(x), -1)[:, 0]
            out = InferOutput(name="score", shape=list(score.shape), datatype="FP32")
            # gRPC answers in raw_output_contents (what tritonclient.grpc reads), REST in JSON
            out.set_data_from_numpy(np.ascontiguousarray(score), binary_data=bool(payload.from_grpc))
            return InferResponse(response_id=payload.id or "", model_name=name, infer_outputs=[out])

    server = kserve.ModelServer(http_port=int(http_port), grpc_port=int(grpc_port), enable_grpc=True, workers=1)
    server.start([OnnxModel()])


if __name__ == "__main__":
    main()
