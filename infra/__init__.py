"""Broker, Prometheus and Grafana configuration (package data of `modelstream.infra`)."""
