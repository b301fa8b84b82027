"""The inference gateway: synchronous HTTP calls (Open Inference Protocol, TensorFlow
Serving REST) over the Kafka path."""
