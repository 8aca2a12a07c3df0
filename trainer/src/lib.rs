//! Supervised and PPO training of meshtune policies, ONNX export, evaluation.
