"""Settings every test shares: services started in-process serve no /metrics endpoint
unless a test names a port (each service has its own default port, which two test
processes would otherwise fight over)."""

import os

for _service in ("trainer", "validator", "publisher", "predictor", "monitor", "gateway"):
    os.environ.setdefault(f"MODELSTREAM_{_service.upper()}_METRICS_PORT", "0")
