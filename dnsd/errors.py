"""Exception hierarchy.

Start-up problems are reported as one line and an exit status (2 for configuration, 3 for start-up);
nothing here is ever shown to a DNS client as a traceback.
"""


class DnsdError(Exception):
    """Base of every error dnsd raises on purpose."""


class ConfigError(DnsdError):
    """A configuration key or value is wrong; the message names the key."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem


class StartupError(DnsdError):
    """Something outside the configuration stopped start-up (a port in use, a missing file)."""


class SourceError(DnsdError):
    """A data source could not deliver (unparsable manifests, API errors); last good data stays served."""
