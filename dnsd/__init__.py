"""dnsd: authoritative DNS for a Kubernetes cluster's global service names, with recursion and DNS64."""

__version__ = "0.1.0"
