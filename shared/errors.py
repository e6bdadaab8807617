"""Root of every parkwatch exception, so a CLI can catch ours and let bugs surface."""


class ParkwatchError(Exception):
    """Base class: an error a user can act on; its message says what to do."""


class ConfigError(ParkwatchError):
    """A config file is missing, unreadable or invalid.

    Carries the file and the dotted key so the CLI can print all three and exit with status 2.
    """

    def __init__(self, path: str, key: str, problem: str) -> None:
        self.path = path
        self.key = key
        self.problem = problem
        super().__init__(f"{path}: {key}: {problem}")


class SecretError(ConfigError):
    """A secret named by the config (environment variable or file) cannot be read."""
