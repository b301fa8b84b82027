"""Running modelstream on a machine: the embedded Kafka broker (with its Maven pom and log4j
configuration as package data), TLS/SASL material and ACLs, and the InfluxDB writer."""
