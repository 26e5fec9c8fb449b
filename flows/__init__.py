"""Prefect flows: scheduled retraining (`retrain`) and the on-device benchmark (`device_benchmark`)."""
