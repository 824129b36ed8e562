"""The Open Inference Protocol over gRPC: Triton's and KServe's ``inference.GRPCInferenceService`` beside the
HTTP routes, over the same service (``mlaas4hep serve --grpc-port P``; ``tritonclient.grpc`` works unchanged).

Modules: :mod:`~mlaas4hep_lab.serving.grpc.protocol` (the messages, from Triton's ``grpc_service.proto`` and
``model_config.proto`` kept here with their descriptor set ``grpc_service.pb``, in a private descriptor pool;
conversions to and from the protocol-neutral tensors), :mod:`~mlaas4hep_lab.serving.grpc.server` (the RPCs,
auth, error codes, metrics; ``start(svc)``, called by the app's lifespan).

Importing this package loads neither grpc nor protobuf.
"""
