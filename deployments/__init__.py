"""Ray Serve deployments: the ingress, the model replica pool and the engines behind it."""
