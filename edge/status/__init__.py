"""The box's local status page for technicians (server-rendered; no front-end build step)."""
