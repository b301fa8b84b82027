"""Everything that talks to Kafka: clients, the transactional batch pipeline, the topology,
the control-log follower, the dead-letter and audit writers, and workarounds for library
bugs (``compat``). Services reach Kafka through this package only."""
