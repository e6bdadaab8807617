"""Alerts, rules and the actions they trigger (notify, roll back, retrain)."""
