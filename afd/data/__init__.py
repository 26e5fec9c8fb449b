"""Data: the codecs, image decoding, the embedded photos and the data sets on disk (no MLflow, DVC or Prefect)."""
