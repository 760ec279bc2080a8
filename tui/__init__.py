"""The batchdeck dashboard: a Textual app that is a NATS client only (API requests, KV
watches, event subscriptions)."""
