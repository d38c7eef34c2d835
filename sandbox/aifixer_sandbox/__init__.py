"""The sandbox: stand-ins for Kubernetes, Loki, GitHub and Twilio on loopback, the
bundled scenarios, the harness that plays them with the real farm, the stub model and
the benchmarks. A package of its own (the distribution `aifixer-sandbox`), beside
`aifixer`.

Each stand-in is a real HTTP server bound to 127.0.0.1 that the real clients
(`kubernetes`, `kubectl`, `requests`, PyGithub, `twilio`) use unchanged. Product
code talks to it only over HTTP, exactly as it talks to the real services, and
never imports anything from this package (the import contracts hold it to that).
"""
