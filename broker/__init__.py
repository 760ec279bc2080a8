"""The NATS side of batchdeck: the wire contract every service imports, the embedded
nats-server, stream/KV provisioning and the control-plane service."""

__version__ = "0.1.0"
