"""How tasks that talk to services retry (one place, shared by the training and device flows)."""

TRANSIENT_RETRIES = dict(retries=2, retry_delay_seconds=[10, 30])  # S3, git and the registry: network hiccups
