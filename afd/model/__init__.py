"""The models and their mathematics, in plain PyTorch: the AFD-Module, baselines, backbones, method kinds, fusing, training, evaluation metrics (no MLflow, DVC or Prefect)."""
