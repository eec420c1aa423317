"""Helpers that start real servers for tests and benchmarks.

servers: the service in process (InProcessServer, on its own thread and event loop) or as an
`sdedit serve` subprocess (ServeProcess), free ports, health checks and condition waits;
redis_server: a redis-server of its own on a free loopback port. Nothing in the service imports
this package.
"""
