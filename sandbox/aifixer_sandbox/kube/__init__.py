"""A Kubernetes API server stand-in: object store, REST API, controllers and a pod simulator."""
