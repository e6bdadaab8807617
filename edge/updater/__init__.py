"""Pulls TUF-verified model packages over MQTT, self-tests them and swaps them in."""
