"""The release channel: a TUF repository served over MQTT, rollouts and rollback."""
