"""Local services for development and tests: S3 (SeaweedFS), the MLflow tracking server."""
