//! ONNX policy runtime (tract): contract checks, validation, batched inference, ONNX export of MLPs, model store.
