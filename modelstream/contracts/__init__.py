"""The contracts on the wire: Avro single-object codec, the public JSON form, typed records,
model definitions and the rules an event must follow, and the builders of artifacts,
commands and audit events. Nothing here touches Kafka."""
