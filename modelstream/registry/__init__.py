"""Model artifacts and the registry: digest, Ed25519 signature and AES-GCM encryption of
artifacts, the follower of the compacted ``models`` topic, lineage re-reads of ``training``,
and ONNX interoperability."""
