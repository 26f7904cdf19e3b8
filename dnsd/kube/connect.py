"""Finding the Kubernetes API: which credentials dnsd uses, decided once at start-up.

Order: an explicit `--kubeconfig` (an operator who names a file means it, even inside a pod), else the
in-cluster service account (the Helm chart's case), else `$KUBECONFIG`, else `~/.kube/config`. The
contract lists "in-cluster, else `$KUBECONFIG`, else `~/.kube/config`" as the *default* of
`--kubeconfig`, so the flag has to win over the in-cluster account or it could never be used in a pod.

Only a configuration that can never work (no source of credentials at all, an unreadable or malformed
kubeconfig) raises `StartupError`, with one line naming what was tried. Everything that might heal
(an unreachable server, a 403, expired tokens) is left to the informer's retry loop. This module does
no I/O to the API server itself and knows nothing about Services or DNS.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes_asyncio import client, config

from dnsd.errors import StartupError

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class Connection:
    """An API client plus the background task that refreshes exec/GCP tokens (None when not needed)."""

    api: Any  # kubernetes_asyncio.client.ApiClient (untyped library)
    description: str  # where the credentials came from, for the start-up log line
    refresher: asyncio.Task[None] | None = None

    async def close(self) -> None:
        """Stop the token refresher and close the HTTP session."""
        if self.refresher is not None:
            self.refresher.cancel()
            try:
                await self.refresher
            except (asyncio.CancelledError, Exception) as exc:
                logger.debug("token refresher ended: %r", exc)  # nothing left to clean up
        await self.api.close()


def _existing_kubeconfigs(value: str) -> str | None:
    """$KUBECONFIG may list several files (':' separated); keep those that exist, None if none does."""
    paths = [p for p in value.split(os.pathsep) if p and Path(p).expanduser().is_file()]
    return os.pathsep.join(paths) if paths else None


def _all_exist(paths: str) -> bool:
    return all(Path(p).expanduser().is_file() for p in paths.split(os.pathsep) if p)


async def _from_kubeconfig(path: str, origin: str) -> tuple[Any, Any]:
    configuration = client.Configuration()
    if not _all_exist(path):
        # kubernetes-asyncio would only warn and then fail with a confusing "current-context" error
        raise StartupError(f"kubeconfig {path} ({origin}) does not exist or is not a file")
    try:
        loader = await config.load_kube_config(
            config_file=path, client_configuration=configuration, persist_config=False
        )
    except Exception as exc:  # missing file, bad YAML, no current context: none of it heals by waiting
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise StartupError(f"kubeconfig {path} ({origin}) is not usable: {reason}") from None
    return configuration, loader


async def connect(kubeconfig: str | None, environ: Mapping[str, str] | None = None) -> Connection:
    """Build an API client from the first usable source of credentials; StartupError when none exists."""
    env = os.environ if environ is None else environ
    loader: Any = None
    if kubeconfig is not None:
        configuration, loader = await _from_kubeconfig(kubeconfig, "--kubeconfig")
        description = f"kubeconfig {kubeconfig}"
    else:
        configuration = client.Configuration()
        in_cluster_problem = ""
        try:
            config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
            description = "in-cluster service account"
        except config.ConfigException as exc:
            in_cluster_problem = str(exc)
            from_env = _existing_kubeconfigs(env.get("KUBECONFIG", ""))
            home = Path(env.get("HOME", str(Path.home()))) / ".kube" / "config"
            if from_env is not None:
                configuration, loader = await _from_kubeconfig(from_env, "$KUBECONFIG")
                description = f"kubeconfig {from_env} ($KUBECONFIG)"
            elif home.is_file():
                configuration, loader = await _from_kubeconfig(str(home), "default location")
                description = f"kubeconfig {home}"
            else:
                raise StartupError(
                    "no Kubernetes configuration: not in a cluster ("
                    + in_cluster_problem.rstrip(".")
                    + "), no --kubeconfig, $KUBECONFIG unset or missing, and "
                    + str(home)
                    + " does not exist"
                ) from None
    api = client.ApiClient(configuration=configuration)
    refresher: asyncio.Task[None] | None = None
    if loader is not None and (loader.provider == "gcp" or "exec" in (loader._user or {})):
        # exec plugins and GCP hand out short-lived tokens; kubernetes-asyncio refreshes them only
        # when asked to, and a watch that runs for days would otherwise start getting 401s.
        refresher = asyncio.create_task(config.refresh_token(loader, configuration))
    logger.info("kubernetes API %s via %s", configuration.host, description)
    return Connection(api, description, refresher)
