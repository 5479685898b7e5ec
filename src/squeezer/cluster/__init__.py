"""squeezer on Ray Serve (``squeezer serve --ray``, ``squeezer ray-config``): an
ingress tier with the HTTP app in front of engine replicas; docs/scale-out.md."""
