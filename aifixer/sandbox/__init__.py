"""The sandbox: stand-ins for Kubernetes, Loki, GitHub and Twilio on loopback.

Each stand-in is a real HTTP server bound to 127.0.0.1 that the real clients
(`kubernetes`, `kubectl`, `requests`, PyGithub, `twilio`) use unchanged. Product
code talks to it only over HTTP, exactly as it talks to the real services, and
never imports anything from this package.
"""
