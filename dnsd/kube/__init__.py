"""Kubernetes side: the slim object model and the sources that feed the zone (manifests file, informer)."""
