"""modelstream: Kafka-native machine-learning model lifecycle."""

__version__ = "0.1.0"
