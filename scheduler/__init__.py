"""The scheduler: batch schedules -> trigger messages on BD_TRIGGERS (HA-safe)."""
