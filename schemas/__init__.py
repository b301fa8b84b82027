"""The Avro contracts, installed as package data of `modelstream.schemas`."""
