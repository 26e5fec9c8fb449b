"""Operations: params.yaml, the file layout, the pipeline's steps, tracking (MLflow), the registry, exports and the device benchmark, the report."""
